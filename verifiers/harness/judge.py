"""The trusted harness H inside the sandbox: it holds the tests, runs them, and writes the verdict report.

Run by a bare interpreter (`python3 -I -S -B`, standard library only) with the report pipe's fd as
its argument. It reads the candidate's code and limits from stdin, forks the zygote (candidate.py),
and only then reads the tests, so no process that runs candidate code ever holds them. The test code
runs here, in H, against proxies (plain_data.py): `candidate(3)` sends the call to the worker and
decodes the reply into plain data, so every `==`, `assert` and `isinstance` runs on trusted objects
in a trusted interpreter. Patched builtins stay in the worker, `os._exit(0)` or killing the zygote
just ends the worker (the test fails), and printing anything goes to /dev/null. The verdict is the
per-test outcome list H writes, with the host's nonce, to the report pipe, which only H holds (the
zygote closes it before any candidate code exists). H is not dumpable, so its memory and descriptors
cannot be read through /proc by the others.

Deliberately not here: rlimits and namespaces for the whole sandbox (the host's sandbox.py and bwrap
do that), and any notion of reward (the host turns the report into a `Result`).
"""

import builtins
import json
import os
import resource
import signal
import socket
import sys
import time

from .candidate import zygote
from .plain_data import Remote
from .units import build_program, shadowed_builtins
from .wire import Timeout, WorkerDied, read_stdin_message
from .worker_client import CandidateError, WorkerClient


class Recorder:
    """The `_bt_begin_`/`_bt_end_` hooks of the unit program: each unit's outcome and time."""

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


def main(report_fd: int):
    """Judge one record: code and limits from stdin, fork the zygote, then the tests; report to report_fd."""
    _not_dumpable()
    first = read_stdin_message()
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
    job = read_stdin_message()  # the tests arrive only now: S and W never hold them
    deadline = time.monotonic() + job["timeout_s"]
    client = WorkerClient(ctl, deadline)
    units = run_function_tests(job, client) if job.get("tests") else []
    units += run_io_tests(job, client) if job.get("io") else []
    report = json.dumps({"nonce": job["nonce"], "units": units, "load_error": client.load_error}).encode()
    while report:
        report = report[os.write(report_fd, report) :]
    os.close(report_fd)
    _reap_all(client, zygote_pid)
