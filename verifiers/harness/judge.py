"""The trusted harness H inside the sandbox: it holds the tests, runs them, and writes the verdict report.

A fresh fork of the forkserver (forkserver.py) per record, with the record's pipes as stdin, stdout,
stderr and the report fd. It reads the candidate's code and limits, then the tests, from stdin. The
candidate's workers (candidate.py) are forked by the forkserver, never by H, so no process that runs
candidate code ever holds the tests; each gets the code over its socket. The test code runs here, in
H, against proxies (plain_data.py): `candidate(3)` sends the call to the worker and decodes the reply
into plain data, so every `==`, `assert` and `isinstance` runs on trusted objects in a trusted
interpreter. Patched builtins stay in the worker, `os._exit(0)` just ends the worker (the test
fails), and printing anything goes to /dev/null. The verdict is the per-test outcome list H writes,
with the host's nonce, to the report pipe, which only H holds. H is not dumpable (inherited from the
forkserver), so its memory and descriptors cannot be read through /proc by the others.

Deliberately not here: rlimits and namespaces for the whole sandbox (the host's sandbox.py and bwrap
do that), killing what the record leaves behind (the forkserver does, after H exits), and any notion
of reward (the host turns the report into a `Result`).
"""

import builtins
import json
import os
import resource
import time

from .plain_data import Remote
from .units import build_program, shadowed_builtins
from .wire import MAX_LOAD_ERROR_CHARS, Timeout, WorkerDied, read_stdin_message
from .worker_client import CandidateError, WorkerClient

MESSAGE_CHARS = 300  # a failing test's message is cut to this in the report
QUOTE_CHARS = 80  # how much of an io test's stdout a failure message quotes


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
        return "fail", ("AssertionError: " + str(exc))[:MESSAGE_CHARS] if str(exc) else "AssertionError"
    return "fail", f"{type(exc).__name__}: {exc}"[:MESSAGE_CHARS]


def run_function_tests(job, client):
    code, units, names, bound = build_program(job["tests"], job.get("entry_point"))
    try:
        client.ensure_loaded()
    except (CandidateError, Timeout, WorkerDied) as e:
        outcome, message = ("timeout", "time limit reached while loading") if isinstance(e, Timeout) else (
            "fail", f"candidate code did not load: {e}"[:MAX_LOAD_ERROR_CHARS])
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
            u.setdefault("message", f"not run: test setup raised {type(e).__name__}: {e}"[:MESSAGE_CHARS])
    for u in units:
        u.setdefault("outcome", "fail")
        u.setdefault("message", "not run")
        u.setdefault("seconds", 0.0)
    return units


def run_io_tests(job, client):
    units = []
    for k, case in enumerate(job["io"]):
        start = time.perf_counter()
        reply = {}
        try:
            client.kill()
            reply = client.spawn({"op": "io", "stdin": case["stdin"]})
            client.kill()
            if "ok" not in reply or type(reply["ok"]) is not str:
                raise CandidateError(str(reply.get("raise", "no output"))[:MESSAGE_CHARS])
            got = reply["ok"]
            ok = _normalise_output(got) == _normalise_output(case["stdout"])
            outcome = "pass" if ok else "fail"
            message = "" if ok else f"stdout {got[:QUOTE_CHARS]!r} != expected {case['stdout'][:QUOTE_CHARS]!r}"
            if "MemoryError" in str(reply.get("raise", "")):
                outcome = "memory"
        except BaseException as e:
            outcome, message = _classify(e, False)
        unit = {"line": 0, "test": f"io case {k}", "outcome": outcome, "message": message,
                "seconds": round(time.perf_counter() - start, 6)}
        if job.get("capture"):  # a tool call: the program's output is the answer, not a comparison
            unit.update(_captured(reply, message))
        units.append(unit)
    return units


def _captured(reply, message: str) -> dict:
    """A tool call's program output and error text from the worker's (untrusted) reply: plain strings."""
    reply = reply if isinstance(reply, dict) else {}
    printed = reply.get("ok", reply.get("printed", ""))
    error = reply.get("raise", "") if "ok" not in reply else ""
    error = error[-1] if isinstance(error, list) and error else error
    if "ok" not in reply and "raise" not in reply:  # no answer: it was killed, or killed its own worker
        error = f"the program ended without an answer ({message or 'no reply'})"
    return {"stdout": printed if type(printed) is str else "", "error": str(error)[:MESSAGE_CHARS]}


def _normalise_output(text: str) -> list[str]:
    """Compare outputs line by line, ignoring trailing spaces and trailing blank lines."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def main(report_fd: int, forkserver):
    """Judge one record: code and limits, then the tests, from stdin; the report to report_fd.

    Runs in a fresh fork of the forkserver, which hands it workers over `forkserver` and kills whatever
    this record leaves behind once H exits.
    """
    first = read_stdin_message()
    limits = first["limits"]
    cpu = limits["cpu_seconds"] + 1  # backstop for H; the workers set their own, tighter
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    for name, value in (("NPROC", limits["nproc"]), ("FSIZE", limits["fsize_bytes"]), ("NOFILE", limits["nofile"]),
                        ("CORE", 0)):
        limit = getattr(resource, "RLIMIT_" + name)
        resource.setrlimit(limit, (value, value))
    job = read_stdin_message()
    deadline = time.monotonic() + job["timeout_s"]
    client = WorkerClient(forkserver, deadline, first["code"], limits)
    units = run_function_tests(job, client) if job.get("tests") else []
    units += run_io_tests(job, client) if job.get("io") else []
    report = json.dumps({"nonce": job["nonce"], "units": units, "load_error": client.load_error}).encode()
    while report:
        report = report[os.write(report_fd, report) :]
    os.close(report_fd)
