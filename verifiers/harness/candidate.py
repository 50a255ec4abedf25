"""The untrusted side inside the sandbox: the zygote S that holds the candidate's code, and its workers W.

S is forked by the harness after the code arrives but BEFORE the tests do: it holds the code, never
the tests, never the report channel, and its stdin/stdout/stderr point at /dev/null. On each request
from the harness it forks one worker W (own process group, tight rlimits, every other descriptor
closed) and hands the harness W's end of a fresh socket. W executes the candidate code and then
answers "call f(args)", "getattr" and "setattr" requests with plain data (plain_data.py), or runs the
code as a whole program on a given stdin for io tests. S itself never runs candidate code.

Deliberately not here: any judgement. Nothing W says is trusted; the harness decides what it means.
"""

import builtins
import io
import json
import os
import resource
import signal
import socket
import sys

from .plain_data import decode, encode
from .wire import recv, send


def zygote(ctl, code, limits):
    """Fork one worker per request and hand H the worker's socket; never runs candidate code itself."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers are reaped by the kernel
    while True:
        try:
            recv(ctl, None)
        except BaseException:
            os._exit(0)
        mine, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            ctl.close()
            mine.close()
            worker(theirs, code, limits)
        theirs.close()
        socket.send_fds(ctl, [json.dumps({"pid": pid}).encode()], [mine.fileno()])
        mine.close()


def worker(sock, code, limits):
    try:
        _enter_worker(sock, limits)
        request = recv(sock, None)
        if request.get("op") == "io":
            send(sock, _run_io(code, request["stdin"], limits["output_bytes"]))
            os._exit(0)
        namespace = {"__name__": "__candidate__", "__builtins__": builtins}
        try:
            exec(compile(code, "<candidate>", "exec"), namespace)
        except BaseException as e:
            send(sock, {"load_error": _describe(e)})
            os._exit(0)
        names = [n for n in namespace if type(n) is str and n not in ("__builtins__", "__name__")]
        send(sock, {"ok": None, "names": names[:1000]})
        _serve(sock, namespace)
    finally:
        os._exit(0)


def _enter_worker(sock, limits):
    os.setpgid(0, 0)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    keep = sock.fileno()
    os.closerange(3, keep)
    os.closerange(keep + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    memory = limits["memory_bytes"]
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    cpu = limits["cpu_seconds"]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    os.chdir("/tmp" if not os.path.isdir(limits["workdir"]) else limits["workdir"])


def _serve(sock, namespace):
    refs, ids = {}, {}

    def make_ref(obj):
        key = id(obj)
        if key not in ids:
            ids[key] = len(refs)
            refs[ids[key]] = obj
        return {"R": ids[key]}

    def resolve(target):
        return refs[target["R"]] if "R" in target else namespace[target["G"]]

    def argument(v):
        t = type(v)
        if t is list:
            return [argument(e) for e in v]
        if t is not dict:
            return v
        (tag, body), = v.items()
        if tag in ("R", "G"):
            return resolve(v)
        if tag in ("T", "S", "Z", "L"):
            items = [argument(e) for e in body]
            return {"T": tuple, "S": set, "Z": frozenset, "L": iter}[tag](items)
        if tag == "D":
            return {k: val for k, val in (argument(p) for p in body)}
        return decode({tag: body}, None)

    while True:
        request = recv(sock, None)
        try:
            f = resolve(request["f"])
            keep_top = False
            if request["op"] == "getattr":
                value = getattr(f, request["name"])
            elif request["op"] == "setattr":
                value = setattr(f, request["name"], argument(request["value"]))
            else:
                keep_top = isinstance(f, type)  # a constructed object stays an object (a handle)
                value = f(*argument(request["args"]), **argument(request["kwargs"]))
            reply = {"ok": encode(value, make_ref, keep_top)}
        except BaseException as e:
            reply = {"raise": [type(e).__name__, _safe_str(e)]}
        send(sock, reply)


def _run_io(code, stdin_text, output_bytes):
    buffer = _CappedBytes(output_bytes)
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin_text.encode()), encoding="utf-8")
    sys.stdout = io.TextIOWrapper(buffer, encoding="utf-8", write_through=True)
    failure = None
    try:
        exec(compile(code, "<candidate>", "exec"), {"__name__": "__main__", "__builtins__": builtins})
    except SystemExit as e:
        if e.code not in (None, 0):
            failure = f"exit status {e.code!r}"
    except BaseException as e:
        failure = _describe(e)
    try:
        sys.stdout.flush()
    except BaseException:
        pass
    if failure is not None:
        return {"raise": ["ProgramError", failure]}
    return {"ok": bytes(buffer.data).decode("utf-8", "replace")}


class _CappedBytes(io.RawIOBase):
    def __init__(self, cap):
        self.cap, self.data = cap, bytearray()

    def writable(self):
        return True

    def write(self, b):
        room = self.cap - len(self.data)
        if room > 0:
            self.data += bytes(b[:room])
        return len(b)


def _describe(e):
    if isinstance(e, SyntaxError):
        return f"SyntaxError: {e.msg} (line {e.lineno})"
    return f"{type(e).__name__}: {_safe_str(e)}"


def _safe_str(e):
    try:
        return str(e)[:500]
    except BaseException:
        return "<unprintable>"
