"""The harness that runs inside the sandbox for `python_tests`: it judges; the candidate only answers.

This file is run as a script by a bare interpreter (`python3 -I -S -c <this source> REPORT_FD`), so it
imports the standard library only. Three processes, all inside the sandbox:

  harness H  (trusted; holds the tests; never executes candidate code; not dumpable, so its memory and
             file descriptors cannot be read through /proc by the others)
    └─ zygote S  (forked after the code arrives but BEFORE the tests do; holds the code, never the
       tests, never the report channel; stdin/stdout/stderr point at /dev/null)
         └─ worker W  (one at a time, forked by S on request: own process group, tight rlimits;
            executes the candidate code, then answers "call f(args)" requests over a private socket)

The test code runs in H, against proxies: `candidate(3)` (or `remove_Occ("hello", "l")`) sends the
call to W, and W's reply is decoded strictly into plain data (None, bool, int, float, str, bytes,
complex, list, tuple, dict, set, frozenset; exact types only; anything else becomes an opaque handle
that can be called or have attributes read, but never compares equal to data and has no truth value).
So every `==`, `assert` and `isinstance` of the test runs on trusted objects in a trusted interpreter:
an object whose __eq__ is always True never reaches H, patched builtins stay in W, `os._exit(0)`
or killing S just ends the worker (the test fails), and printing anything goes to /dev/null.
The verdict is the per-test outcome list that H writes, with the host's nonce, to REPORT_FD, a
pipe only H holds (S closes it before any candidate code exists). W never sees the expected values.

Deliberately not here: rlimits and namespaces for the whole sandbox (the host's `sandbox.py` and
bwrap do that), and any notion of reward (the host turns the report into a `Result`).
"""

import ast
import builtins
import io
import json
import os
import resource
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterator

MAX_MESSAGE = 8 << 20  # bytes; a bigger reply from the worker is a failure, not a buffer
MAX_ITER_ITEMS = 100_000  # a returned iterator is materialised up to this many items
MAX_ENCODE_DEPTH = 100  # a returned value nested deeper than this is an error
MAX_ENCODE_ITEMS = 1_000_000  # ...and so is one with more parts than this (shared parts count each time)
_HEADER = struct.Struct(">I")


class Timeout(BaseException):
    """The record's time budget ran out (BaseException: test code's `except Exception` must not eat it)."""


class WorkerDied(BaseException):
    """The worker (or the zygote) went away or broke the protocol: the candidate's fault."""


class CandidateError(Exception):
    """An exception raised by candidate code whose type is not a builtin exception."""


# ----------------------------------------------------------------------------------------- framing
def send(sock, obj) -> None:
    data = json.dumps(obj).encode()
    sock.sendall(_HEADER.pack(len(data)) + data)


def _recv_exact(sock, n: int, deadline: float | None) -> bytes:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                raise Timeout()
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise WorkerDied("connection closed")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv(sock, deadline: float | None):
    (n,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size, deadline))
    if n > MAX_MESSAGE:
        raise WorkerDied(f"reply of {n} bytes is over the {MAX_MESSAGE} byte limit")
    try:
        return json.loads(_recv_exact(sock, n, deadline))
    except (ValueError, RecursionError) as e:
        raise WorkerDied(f"unreadable reply: {e}") from None


def _read_stdin_message():
    def exact(n):
        buf = b""
        while len(buf) < n:
            chunk = os.read(0, n - len(buf))
            if not chunk:
                raise SystemExit("harness: stdin closed early")
            buf += chunk
        return buf

    (n,) = _HEADER.unpack(exact(_HEADER.size))
    return json.loads(exact(n))


# ----------------------------------------------------------------------------- plain-data encoding
def encode(x, make_ref, keep_top=False):
    """Plain data -> JSON-able tagged form; anything else -> make_ref(x) (an opaque handle).

    Instances of subclasses of the plain types (Counter, OrderedDict, defaultdict, namedtuple, int/str
    subclasses...) are encoded by content as their builtin base type, unless `keep_top` (the value
    came out of a constructor call: the test wants the object itself). Nesting, size and
    self-reference are capped, so encoding always ends. The receiver decodes exact types only, so no
    subclass method ever runs where the verdict is made.
    """
    budget = [MAX_ENCODE_ITEMS]
    active = set()

    def container(obj, depth, items):
        key = id(obj)
        if key in active:
            raise ValueError("returned value contains itself (a self-referencing container)")
        active.add(key)
        try:
            return [enc(e, depth + 1) for e in items]
        finally:
            active.discard(key)

    def enc(x, depth):
        budget[0] -= 1
        if budget[0] < 0:
            raise ValueError(f"returned value has more than {MAX_ENCODE_ITEMS} parts")
        if depth > MAX_ENCODE_DEPTH:
            raise ValueError(f"returned value is nested more than {MAX_ENCODE_DEPTH} levels deep")
        t = type(x)
        if x is None or t is bool or t is str or t is float:
            return x
        if t is int:
            return x if -(1 << 62) < x < (1 << 62) else {"I": format(x, "x")}
        if t is list:
            return container(x, depth, x)
        if t is tuple:
            return {"T": container(x, depth, x)}
        if t is dict:
            return {"D": container(x, depth, ([k, v] for k, v in x.items()))}
        if t is set or t is frozenset:
            return {"S" if t is set else "Z": container(x, depth, x)}
        if t is bytes or t is bytearray:
            return {"B" if t is bytes else "A": x.hex()}
        if t is complex:
            return {"C": [x.real, x.imag]}
        if not (keep_top and depth == 0):
            # subclasses of plain types (checked on the real type: a faked __class__ does not count)
            if issubclass(t, int):
                return enc(int.__int__(x), depth)
            if issubclass(t, float):
                return float.__float__(x)
            if issubclass(t, str):
                return str.__str__(x)
            if issubclass(t, dict):
                return {"D": container(x, depth, ([k, v] for k, v in list(x.items())))}
            if issubclass(t, list):
                return container(x, depth, list(x))
            if issubclass(t, tuple):
                return {"T": container(x, depth, tuple.__iter__(x))}
            if issubclass(t, (set, frozenset)):
                return {"S" if issubclass(t, set) else "Z": container(x, depth, list(x))}
            if issubclass(t, bytes):
                return {"B": bytes.hex(x)}
            if issubclass(t, bytearray):
                return {"A": bytearray.hex(x)}
            if issubclass(t, complex):
                return {"C": [complex.real.__get__(x), complex.imag.__get__(x)]}
        if isinstance(x, Iterator) and not callable(x):  # map/filter/generator: what the test would list()
            items = []
            for item in x:
                if len(items) >= MAX_ITER_ITEMS:
                    raise ValueError(f"returned iterator has more than {MAX_ITER_ITEMS} items")
                items.append(enc(item, depth + 1))
            return {"L": items}
        return make_ref(x)

    return enc(x, 0)


def decode(v, worker):
    """Strict inverse of `encode`, run in H on untrusted JSON: only exact plain types come out."""
    t = type(v)
    if v is None or t is bool or t is int or t is float or t is str:
        return v
    if t is list:
        return [decode(e, worker) for e in v]
    if t is not dict or len(v) != 1:
        raise WorkerDied(f"malformed value of type {t.__name__}")
    (tag, body), = v.items()
    if tag == "R" and type(body) is int:
        return Handle(worker, body)
    if tag in ("I", "B", "A") and type(body) is str:
        return {"I": lambda: int(body, 16), "B": lambda: bytes.fromhex(body), "A": lambda: bytearray.fromhex(body)}[tag]()
    if type(body) is not list:
        raise WorkerDied(f"malformed {tag!r} value")
    items = [decode(e, worker) for e in body]
    if tag == "T":
        return tuple(items)
    if tag == "D" and all(type(p) is list and len(p) == 2 for p in items):
        return {k: val for k, val in items}
    if tag in ("S", "Z"):
        return set(items) if tag == "S" else frozenset(items)
    if tag == "L":
        return iter(items)
    if tag == "C" and len(items) == 2 and all(type(p) in (int, float) for p in items):
        return complex(*items)
    raise WorkerDied(f"malformed {tag!r} value")


class Handle:
    """An object living in the worker: callable and attribute-readable, never equal to data, no truth value."""

    __slots__ = ("_worker", "_id", "_generation")

    def __init__(self, worker, ref_id):
        object.__setattr__(self, "_worker", worker)
        object.__setattr__(self, "_id", ref_id)
        object.__setattr__(self, "_generation", worker.generation)

    def _target(self):
        if self._generation != self._worker.generation:
            raise WorkerDied("handle to an object of a worker that has since died")
        return {"R": self._id}

    def __call__(self, *args, **kwargs):
        return self._worker.call(self._target(), args, kwargs)

    def __getattr__(self, name):
        return self._worker.request({"op": "getattr", "f": self._target(), "name": name})

    def __setattr__(self, name, value):  # `root.left = Node(2)` in test setup: set in the worker
        self._worker.setattr(self._target(), name, value)

    def __eq__(self, other):
        return type(other) is Handle and (other._worker, other._id) == (self._worker, self._id)

    def __hash__(self):
        return hash(self._id)

    def __bool__(self):
        raise TypeError("a candidate-defined object has no truth value in tests; return plain data")

    def __repr__(self):
        return f"<candidate object #{self._id}>"


class Remote:
    """A global name of the candidate module (a function or class), resolved in the current worker."""

    __slots__ = ("_worker", "_name")

    def __init__(self, worker, name):
        object.__setattr__(self, "_worker", worker)
        object.__setattr__(self, "_name", name)

    def __call__(self, *args, **kwargs):
        return self._worker.call({"G": self._name}, args, kwargs)

    def __getattr__(self, name):
        return self._worker.request({"op": "getattr", "f": {"G": self._name}, "name": name})

    def __setattr__(self, name, value):
        self._worker.setattr({"G": self._name}, name, value)

    def __repr__(self):
        return f"<candidate {self._name}>"


def _encode_argument(x):
    if type(x) is Handle:
        return x._target()
    if type(x) is Remote:
        return {"G": x._name}
    raise TypeError(f"cannot pass a {type(x).__name__} to candidate code (plain data only)")


# ------------------------------------------------------------------------- H: the worker's proxy
class WorkerClient:
    """H's end of one worker at a time; spawns a fresh one (via the zygote) after a death."""

    def __init__(self, ctl, deadline: float):
        self.ctl, self.deadline = ctl, deadline
        self.sock, self.pid, self.generation = None, None, 0
        self.memory_hit = False
        self.load_error = None
        self.builtin_names = set()  # builtin names the candidate defines at top level (its claim)

    def spawn(self, first_request):
        if time.monotonic() >= self.deadline:
            raise Timeout()
        self.generation += 1
        send(self.ctl, {"op": "spawn"})
        if not select.select([self.ctl], [], [], max(0.0, self.deadline - time.monotonic()))[0]:
            raise Timeout()
        data, fds, _, _ = socket.recv_fds(self.ctl, 1024, 1)
        if not data or len(fds) != 1:
            raise WorkerDied("the zygote process is gone (was it killed?)")
        self.pid = json.loads(data)["pid"]
        self.sock = socket.socket(fileno=fds[0])
        return self._exchange(first_request)

    def ensure_loaded(self):
        if self.load_error is not None:
            raise CandidateError(self.load_error)
        if self.sock is None:
            reply = self.spawn({"op": "load"})
            if "load_error" in reply:
                self.load_error = str(reply["load_error"])[:2000]
                self.kill()
                raise CandidateError(self.load_error)
            names = reply.get("names")
            if type(names) is list:
                self.builtin_names = {n for n in names[:1000] if type(n) is str and hasattr(builtins, n)}

    def _exchange(self, message):
        try:
            send(self.sock, message)
            reply = recv(self.sock, self.deadline)
        except (Timeout, WorkerDied):
            self.kill()
            raise
        except OSError as e:
            self.kill()
            raise WorkerDied(str(e)) from None
        if type(reply) is not dict:
            self.kill()
            raise WorkerDied("malformed reply")
        return reply

    def request(self, message):
        self.ensure_loaded()
        reply = self._exchange(message)
        if "ok" in reply:
            return decode(reply["ok"], self)
        if "raise" in reply and type(reply["raise"]) is list and len(reply["raise"]) == 2:
            raise _rebuild_exception(*(str(p)[:500] for p in reply["raise"]), client=self)
        self.kill()
        raise WorkerDied("malformed reply")

    def call(self, target, args, kwargs):
        message = {
            "op": "call",
            "f": target,
            "args": encode(list(args), _encode_argument),
            "kwargs": encode(dict(kwargs), _encode_argument),
        }
        return self.request(message)

    def setattr(self, target, name, value):
        if type(name) is not str:
            raise TypeError("attribute name must be a string")
        self.request({"op": "setattr", "f": target, "name": name, "value": encode(value, _encode_argument)})

    def kill(self):
        if self.pid is not None:
            for kill in (os.killpg, os.kill):
                try:
                    kill(self.pid, signal.SIGKILL)
                except OSError:
                    pass
        if self.sock is not None:
            self.sock.close()
        self.sock, self.pid = None, None


def _rebuild_exception(name, message, client):
    if name == "MemoryError":
        client.memory_hit = True
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except Exception:
            pass
    return CandidateError(f"{name}: {message}")


# ---------------------------------------------------------------------------- H: tests -> units
def _has_assert(node) -> bool:
    return any(isinstance(n, ast.Assert) for n in ast.walk(node))


def _wrap_units(stmts, units, source):
    """Each statement holding an assert becomes a unit: its outcome is recorded and execution goes on."""
    out = []
    for stmt in stmts:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or not _has_assert(stmt):
            out.append(stmt)
            continue
        i = len(units)
        text = ast.get_source_segment(source, stmt) or ""
        units.append({"line": stmt.lineno, "test": " ".join(text.split())[:200]})
        out.extend(_unit_template(i, [stmt]))
    return out


def _unit_template(i, body):
    tpl = ast.parse(
        f"_bt_begin_({i})\ntry:\n    pass\nexcept BaseException as _bt_e_:\n    _bt_end_({i}, _bt_e_)\n"
        f"else:\n    _bt_end_({i}, None)\n"
    ).body
    tpl[1].body = body
    return tpl


def build_program(tests: str, entry_point: str | None):
    """(compiled test module, units, names it reads) with every assert-holding statement a unit."""
    tree = ast.parse(tests, "<tests>")
    units = []
    check = next((s for s in tree.body if isinstance(s, ast.FunctionDef) and s.name == "check"), None)
    if check is not None and entry_point:
        check.body = _wrap_units(check.body, units, tests)
    tree.body = _wrap_units(tree.body, units, tests)
    if check is not None and entry_point:
        call = ast.parse(f"check({entry_point})").body
        if not units:  # check() asserts nothing directly (e.g. calls helpers): the call is the test
            units.append({"line": check.lineno, "test": f"check({entry_point})"})
            call = _unit_template(0, call)
        tree.body.extend(call)
    if not units:  # no asserts at all: the whole script running cleanly is the one test
        units.append({"line": 1, "test": "tests run without error"})
        tree.body = _unit_template(0, tree.body)
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    return compile(ast.fix_missing_locations(tree), "<tests>", "exec"), units, names, _bound_names(tree)


def _bound_names(tree) -> set[str]:
    """Every name the test code binds itself (assignments, defs, imports, parameters, handlers...)."""
    bound = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load):
            bound.add(n.id)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(n.name)
        elif isinstance(n, ast.alias):
            bound.add((n.asname or n.name).split(".")[0])
        elif isinstance(n, ast.arg):
            bound.add(n.arg)
        elif isinstance(n, ast.ExceptHandler) and n.name:
            bound.add(n.name)
        elif isinstance(n, (ast.Global, ast.Nonlocal)):
            bound.update(n.names)
    return bound


def shadowed_builtins(names, bound, candidate_builtins, entry_point) -> set[str]:
    """Which builtin names the tests must resolve to the candidate's top-level definition.

    Plain Python would let every candidate top-level name shadow a builtin (MBPP: `def sum(a, b)`
    tested with `assert sum(10, 15) == 6`). But a builtin the tests use to *check* results
    (`abs(f(1) - 2) < 1e-9`, `len(f(x)) == 3`) must stay the real one, or a candidate could define
    `def abs(x): return 0`. So a builtin is shadowed only when it is clearly the function under test:
    the entry point, or, without one, when the tests use no other candidate name at all and exactly
    one builtin name that the candidate defines (the candidate's claim is only trusted that far).
    """
    names = {n for n in names - bound if not n.startswith("_bt_")}  # not the harness's own unit hooks
    used = names & candidate_builtins
    if entry_point:
        return {entry_point} & used
    if len(used) != 1 or any(not hasattr(builtins, n) for n in names):
        return set()
    return used


class Recorder:
    def __init__(self, units, client):
        self.units, self.client, self.started = units, client, {}

    def begin(self, i):
        self.client.memory_hit = False
        self.started[i] = time.perf_counter()

    def end(self, i, exc):
        unit = self.units[i]
        unit["seconds"] = round(time.perf_counter() - self.started.pop(i, time.perf_counter()), 6)
        unit["outcome"], unit["message"] = _classify(exc, self.client.memory_hit)


def _classify(exc, memory_hit):
    if exc is None:
        return "pass", ""
    if isinstance(exc, Timeout):
        return "timeout", "time limit reached"
    if memory_hit or isinstance(exc, MemoryError):
        return "memory", "memory limit reached"
    if isinstance(exc, AssertionError):
        return "fail", ("AssertionError: " + str(exc))[:300] if str(exc) else "AssertionError"
    return "fail", f"{type(exc).__name__}: {exc}"[:300]


def run_function_tests(job, client):
    code, units, names, bound = build_program(job["tests"], job.get("entry_point"))
    try:
        client.ensure_loaded()
    except (CandidateError, Timeout, WorkerDied) as e:
        outcome, message = ("timeout", "time limit reached while loading") if isinstance(e, Timeout) else (
            "fail", f"candidate code did not load: {e}"[:2000])
        return [dict(u, outcome=outcome, message=message, seconds=0.0) for u in units]
    recorder = Recorder(units, client)
    namespace = {"__name__": "__tests__", "__builtins__": builtins}
    namespace.update({n: Remote(client, n) for n in names if not hasattr(builtins, n)})
    shadowed = shadowed_builtins(names, bound, client.builtin_names, job.get("entry_point"))
    namespace.update({n: Remote(client, n) for n in shadowed})
    namespace.update(_bt_begin_=recorder.begin, _bt_end_=recorder.end)
    try:
        exec(code, namespace)
    except BaseException as e:  # a setup statement (not a unit) failed: the units not run say why
        for u in units:
            u.setdefault("outcome", "fail")
            u.setdefault("message", f"not run: test setup raised {type(e).__name__}: {e}"[:300])
    for u in units:
        u.setdefault("outcome", "fail")
        u.setdefault("message", "not run")
        u.setdefault("seconds", 0.0)
    return units


def run_io_tests(job, client):
    units = []
    for k, case in enumerate(job["io"]):
        start = time.perf_counter()
        try:
            client.kill()
            reply = client.spawn({"op": "io", "stdin": case["stdin"]})
            client.kill()
            if "ok" not in reply or type(reply["ok"]) is not str:
                raise CandidateError(str(reply.get("raise", "no output"))[:300])
            got = reply["ok"]
            ok = _normalise_output(got) == _normalise_output(case["stdout"])
            outcome = "pass" if ok else "fail"
            message = "" if ok else f"stdout {got[:80]!r} != expected {case['stdout'][:80]!r}"
            if "MemoryError" in str(reply.get("raise", "")):
                outcome = "memory"
        except BaseException as e:
            outcome, message = _classify(e, False)
        units.append({"line": 0, "test": f"io case {k}", "outcome": outcome, "message": message,
                      "seconds": round(time.perf_counter() - start, 6)})
    return units


def _normalise_output(text: str) -> list[str]:
    """Compare outputs line by line, ignoring trailing spaces and trailing blank lines."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


# ------------------------------------------------------------------------------- S and W (untrusted)
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


# ------------------------------------------------------------------------------------------ H main
def _not_dumpable():
    """PR_SET_DUMPABLE=0: /proc/<H>/mem, /environ and /fd become unreadable to the other processes."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # child subreaper: orphans come to H
    except Exception as e:  # reduced protection, not a broken verifier
        print(f"harness: prctl unavailable: {e}", file=sys.stderr)


def _reap_all(client, zygote_pid):
    """Kill every process left below H: the worker group, the zygote, then orphans reparented to H."""
    client.kill()
    try:
        os.kill(zygote_pid, signal.SIGKILL)
    except OSError:
        pass
    me = str(os.getpid())
    for _ in range(50):
        children = []
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        stat = f.read()
                except OSError:
                    continue
                if stat[stat.rfind(")") + 2 :].split()[1] == me:
                    children.append(int(pid))
        if not children:
            return
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass


def main():
    report_fd = int(sys.argv[1])
    _not_dumpable()
    first = _read_stdin_message()
    limits = first["limits"]
    for name, value in (("NPROC", limits["nproc"]), ("FSIZE", limits["fsize_bytes"]), ("NOFILE", limits["nofile"]), ("CORE", 0)):
        limit = getattr(resource, "RLIMIT_" + name)
        resource.setrlimit(limit, (value, value))
    ctl, ctl_child = socket.socketpair()
    zygote_pid = os.fork()
    if zygote_pid == 0:
        try:
            ctl.close()
            null = os.open("/dev/null", os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.close(report_fd)
            zygote(ctl_child, first["code"], limits)
        finally:
            os._exit(0)
    ctl_child.close()
    job = _read_stdin_message()  # the tests arrive only now: S and W never hold them
    deadline = time.monotonic() + job["timeout_s"]
    client = WorkerClient(ctl, deadline)
    units = run_function_tests(job, client) if job.get("tests") else []
    units += run_io_tests(job, client) if job.get("io") else []
    report = json.dumps({"nonce": job["nonce"], "units": units, "load_error": client.load_error}).encode()
    while report:
        report = report[os.write(report_fd, report) :]
    os.close(report_fd)
    _reap_all(client, zygote_pid)


if __name__ == "__main__":
    main()
