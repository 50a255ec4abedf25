"""The untrusted side inside the sandbox: a worker W executes the candidate's code and answers the harness.

Each worker is forked by the forkserver (forkserver.py), which never holds a record's code or tests,
and first makes itself a clean process: own process group, stdin/stdout/stderr on /dev/null, every
other descriptor closed but its socket to the harness. Its first request brings the code and the
limits (set before any candidate code runs); it then either executes the code and answers "call
f(args)", "getattr" and "setattr" requests with plain data (plain_data.py), or runs the code as a
whole program on a given stdin for io tests.

Deliberately not here: any judgement. Nothing W says is trusted; the harness decides what it means.
"""

import builtins
import io
import os
import resource
import sys

from .plain_data import decode, encode
from .wire import MAX_EXCEPTION_CHARS, MAX_NAMES, recv, send


def worker(sock):
    """Serve the harness on `sock` until it is done with this worker; never returns (os._exit)."""
    try:
        _enter_worker(sock)
        request = recv(sock, None)
        code, limits = request["code"], request["limits"]
        _limit(limits)
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
        send(sock, {"ok": None, "names": names[:MAX_NAMES]})
        _serve(sock, namespace)
    finally:
        os._exit(0)


def _enter_worker(sock):
    """Right after the fork, before anything else: nothing of the forkserver's stays reachable."""
    os.setpgid(0, 0)
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    keep = sock.fileno()
    os.closerange(3, keep)
    os.closerange(keep + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def _limit(limits):
    """The record's limits, set before any candidate code runs."""
    memory, cpu = limits["memory_bytes"], limits["cpu_seconds"]
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    for name, value in (("NPROC", limits["nproc"]), ("FSIZE", limits["fsize_bytes"]), ("NOFILE", limits["nofile"]),
                        ("CORE", 0)):
        resource.setrlimit(getattr(resource, "RLIMIT_" + name), (value, value))
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
    except BaseException:  # the candidate broke its own stdout; what it printed so far is still returned
        pass
    printed = bytes(buffer.data).decode("utf-8", "replace")
    if failure is not None:  # what it printed before it failed is an observation for a tool call
        return {"raise": ["ProgramError", failure], "printed": printed}
    return {"ok": printed}


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
        return str(e)[:MAX_EXCEPTION_CHARS]
    except BaseException:
        return "<unprintable>"
