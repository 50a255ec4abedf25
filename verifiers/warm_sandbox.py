"""Warm sandboxes for python_tests: one long-lived sandbox per concurrent caller, reused record after record.

Starting bwrap and a fresh interpreter costs about 45 ms, far more than judging a HumanEval-sized
record. So each slot of `SANDBOXES` keeps one sandbox (sandbox.py) running the harness's forkserver
(harness/forkserver.py), which has already imported the harness. `run_harness(stdin, ...)` sends the
record's four pipes (stdin, stdout, stderr, report) over the slot's control socket; the forkserver
forks a fresh harness on them and, once it exits, kills whatever the record left and empties the
sandbox's private scratch space, and only then answers with the harness's exit status. That answer
is what frees the slot for the next record.

Per record, from the outside: a wall-clock deadline; past it the whole sandbox is SIGKILLed (under
bwrap its PID namespace takes every process with it) and the slot starts a new one for its next
record. So does a sandbox that died (candidate code can kill the forkserver) or could not clean up.
The record that was running gets what its pipes hold: a report with the nonce, or else how it ended
(deadline, killed by a signal, or exit status), never a silent pass.

Lifecycle: sandboxes start lazily, one per concurrent caller (sequential callers keep reusing one),
and are closed at interpreter exit (atexit). A forked child process never uses its parent's. Each is
started from one long-lived thread (sandbox.py), so bwrap's --die-with-parent fires only when this
process dies, e.g. a Ray actor killed with SIGKILL, and not when a caller's thread ends.

Deliberately not here: what the pipes carry and mean (python_tests.py), and how the sandbox is built
and limited (sandbox.py).
"""

import atexit
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from .sandbox import (
    SCRATCH,
    STDERR_TAIL_BYTES,
    Completed,
    Limits,
    bwrap_path,
    kill_sandbox,
    read_capped,
    sandbox_python,
    start_sandboxed,
)

START_TIMEOUT_S = 30.0  # bwrap, interpreter and harness imports on a loaded machine; no record's budget
CONTROL_MESSAGE_BYTES = 4096  # the forkserver's answers on the control socket are short JSON objects
STDERR_READ_BYTES = 4096  # read of a closed sandbox's stderr (only bwrap's or our own short errors land there)
_HARNESS_DIR = Path(__file__).with_name("harness")
_HARNESS_MOUNT = "/opt/branchrl"  # the harness package's parent folder inside bwrap
# `python3 -I` puts no folder of ours on sys.path: the harness is imported from the folder given.
_FORKSERVER_MAIN = ("import json, sys; sys.path.insert(0, sys.argv[1]); from harness.forkserver import main; "
                    "main(int(sys.argv[2]), json.loads(sys.argv[3]))")


class SandboxUnavailable(Exception):
    """The sandbox could not be started: our problem (an "error" verdict), never the candidate's."""


class WarmSandbox:
    """One sandboxed forkserver and its control socket; runs one record at a time (the pool sees to that)."""

    def __init__(self) -> None:
        self.proc = None  # the sandbox's root process (bwrap, or the forkserver itself without bwrap)
        self._ctl: socket.socket | None = None
        self._launch: tuple | None = None  # what it was started with; a different launch restarts it

    def run(self, stdin: bytes, timeout_s: float, limits: Limits) -> Completed:
        """Run one record: `stdin` to the harness, until its report, exit and clean-up or `timeout_s`."""
        bwrap = bwrap_path()
        start = time.monotonic()
        (stdin_r, stdin_w), (out_r, out_w), (err_r, err_w), (report_r, report_w) = (os.pipe() for _ in range(4))
        outputs = {"stdout": (out_r, limits.output_bytes), "stderr": (err_r, limits.output_bytes),
                   "report": (report_r, limits.report_bytes)}
        try:
            self._send([stdin_r, out_w, err_w, report_w], (bwrap, limits))
        except SandboxUnavailable:
            for fd in (stdin_w, out_r, err_r, report_r):
                os.close(fd)
            raise
        finally:
            for fd in (stdin_r, out_w, err_w, report_w):  # the forkserver holds them now
                os.close(fd)
        deadline = time.monotonic() + timeout_s  # a sandbox (re)start above is not the record's time
        try:
            out, timed_out = read_capped(stdin_w, stdin, outputs, deadline)
            returncode, timed_out, sandbox_stderr = self._finish(deadline, timed_out)
        except BaseException:  # its answer to this record must never be read as the next record's
            self.close()
            raise
        finally:
            for fd, _ in outputs.values():
                os.close(fd)
        return Completed(
            returncode=returncode, timed_out=timed_out, stdout=out["stdout"][0],
            stderr=out["stderr"][0] + sandbox_stderr, report=out["report"][0], report_truncated=out["report"][1],
            seconds=time.monotonic() - start, isolation="bwrap" if bwrap else "rlimits",
        )

    def close(self) -> bytes:
        """Kill the sandbox (if running); what it wrote to its own stderr (only our errors or bwrap's)."""
        if self.proc is None:
            return b""
        proc, self.proc = self.proc, None
        self._ctl.close()
        kill_sandbox(proc)
        os.set_blocking(proc.stderr.fileno(), False)
        try:
            tail = proc.stderr.read(STDERR_READ_BYTES) or b""
        except OSError:
            tail = b""
        proc.stderr.close()
        return tail

    def _send(self, fds: list[int], launch: tuple) -> None:
        """Hand the record's pipes to the forkserver, (re)starting the sandbox when needed."""
        if self.proc is not None and (self._launch != launch or self.proc.poll() is not None):
            self.close()
        for attempt in range(2):
            if self.proc is None:
                self._start(launch)
            try:
                socket.send_fds(self._ctl, [b"run"], fds)
                return
            except OSError:  # died while idle, between the check above and now: start a new one
                if attempt:
                    raise SandboxUnavailable("the warm sandbox died twice before it took a record") from None
                self.close()

    def _start(self, launch: tuple) -> None:
        bwrap, limits = launch
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = start_sandboxed(bwrap, _forkserver_argv(bwrap, theirs.fileno()), limits,
                                        _binds(bwrap), pass_fds=(theirs.fileno(),))
        except OSError as e:
            ours.close()
            raise SandboxUnavailable(f"could not start the sandbox: {e}") from None
        finally:
            theirs.close()
        self._ctl, self._launch = ours, launch
        reply = self._reply(time.monotonic() + START_TIMEOUT_S)
        if not (reply or {}).get("ready"):
            tail = self.close().decode("utf-8", "replace")[-STDERR_TAIL_BYTES:]
            raise SandboxUnavailable(f"the sandbox did not start ({'no answer' if reply is None else reply}): {tail}")

    def _reply(self, deadline: float) -> dict | None:
        """The forkserver's next message; {} if it closed the socket (it died), None at the deadline."""
        if not select.select([self._ctl], [], [], max(0.0, deadline - time.monotonic()))[0]:
            return None
        try:
            data = self._ctl.recv(CONTROL_MESSAGE_BYTES)
        except OSError:
            data = b""
        return json.loads(data) if data else {}

    def _finish(self, deadline: float, timed_out: bool) -> tuple[int | None, bool, bytes]:
        """(returncode, timed_out, sandbox stderr) once the forkserver answered, died or ran out of time."""
        reply = None if timed_out else self._reply(deadline)
        if reply is None:  # past the deadline: the whole sandbox goes, and the record with it
            self.close()
            return None, True, b""
        if "status" not in reply:  # the forkserver died during the record: the sandbox's exit code says how
            try:
                code = self.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.close()
                return None, True, b""
            return code, False, self.close()
        if reply.get("retire"):  # it could not clean up after the record: never reuse it
            self.close()
        return int(reply["status"]), False, b""


def _forkserver_argv(bwrap: str | None, ctl_fd: int) -> list[str]:
    # Under bwrap the scratch folders and the IPC namespace are the sandbox's own: wiped between records.
    config = {"scratch": list(SCRATCH), "private_ipc": True} if bwrap else {"scratch": [], "private_ipc": False}
    parent = _HARNESS_MOUNT if bwrap else str(_HARNESS_DIR.parent)
    return [sandbox_python(), "-I", "-S", "-B", "-c", _FORKSERVER_MAIN, parent, str(ctl_fd), json.dumps(config)]


def _binds(bwrap: str | None) -> list[tuple[str, str]]:
    if not bwrap:
        return []
    binds = [] if sandbox_python().startswith("/usr/") else [(os.path.realpath(sys.base_prefix),) * 2]
    return [*binds, (str(_HARNESS_DIR), f"{_HARNESS_MOUNT}/harness")]


class SandboxPool:
    """Warm sandboxes, one per concurrent caller, started lazily; the most recently freed one serves next."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner = os.getpid()
        self._all: list[WarmSandbox] = []
        self._free: list[WarmSandbox] = []

    def run(self, stdin: bytes, timeout_s: float, limits: Limits) -> Completed:
        box = self._take()
        try:
            return box.run(stdin, timeout_s, limits)
        finally:
            with self._lock:
                if box in self._all:
                    self._free.append(box)

    def sandboxes(self) -> list[WarmSandbox]:
        with self._lock:
            return list(self._all) if self._owner == os.getpid() else []

    def close(self) -> None:
        """Kill every sandbox of this process (the pool starts new ones if used again)."""
        with self._lock:
            boxes = self._all if self._owner == os.getpid() else []
            self._all, self._free = [], []
        for box in boxes:
            box.close()

    def _take(self) -> WarmSandbox:
        with self._lock:
            if self._owner != os.getpid():  # a forked child: those sandboxes are its parent's
                self._owner, self._all, self._free = os.getpid(), [], []
            if self._free:
                return self._free.pop()
            box = WarmSandbox()
            self._all.append(box)
            return box


SANDBOXES = SandboxPool()
atexit.register(SANDBOXES.close)
