"""The warm sandbox's long-lived process F: it forks a fresh harness for each record and cleans up after it.

Started once per pool slot by the host (warm_sandbox.py) inside the sandbox, with the harness modules
(and the standard modules candidate code imports most) already loaded, so a record costs a fork
instead of a sandbox and interpreter start. Per record the host sends, over the control socket, four
descriptors: the record's stdin (code and limits, then the tests), stdout, stderr and report pipes. F
forks the harness H (judge.py) on them, and forks the candidate's workers (candidate.py) for H: the
first at once, the others when H asks (after a worker died). So a worker is never a fork of a process
that held the record's tests or code; it gets the code from H. When H has exited, F makes the
sandbox as it was before the record: every process left below F is killed (F is a child subreaper,
so orphans and daemons come to it, not to init), and when the host says the sandbox has private
scratch space (under bwrap) the scratch folders are emptied and System V IPC objects removed. Only
then does F send H's exit status, which tells the host the sandbox is free again. If the clean-up
fails, F says so and exits: the host starts a new sandbox rather than reuse a dirty one.

F never reads a record's code or tests (they stay in the pipe until H reads them), so nothing of one
record is in the memory later records are forked from. F is not dumpable (nor is any process forked
from it), so /proc/<F>/mem and /fd are closed to candidate code. Candidate code runs as the same
user and can still kill F; that ends the whole sandbox, which the host sees and replaces.

Deliberately not here: deadlines (the host kills the whole sandbox at a record's wall-clock deadline)
and judging (judge.py).
"""

import ctypes
import gc
import json
import os
import select
import signal
import socket
import sys
import traceback

from . import candidate, judge

# Loaded once here, so each record's worker starts with them (HumanEval code nearly always imports typing).
WARM_IMPORTS = ("typing", "math", "re", "collections", "itertools", "functools", "heapq", "bisect", "string")
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_SET_CHILD_SUBREAPER = 1, 4, 36
_IPC_RMID = 0
_LIBC = ctypes.CDLL(None, use_errno=True)


def main(ctl_fd: int, config: dict) -> None:
    """Serve records until the host closes the control socket. config: {"scratch": [folders], "private_ipc": bool}."""
    ctl = socket.socket(fileno=ctl_fd)
    _protect()
    for name in WARM_IMPORTS:
        __import__(name)
    gc.freeze()  # the collector never walks (so never copies on write) what every fork shares
    modes = {folder: os.stat(folder).st_mode & 0o7777 for folder in config["scratch"]}
    ctl.send(json.dumps({"ready": True}).encode())
    while True:
        data, fds, _, _ = socket.recv_fds(ctl, 64, 4)
        if not data:  # the host is gone or closed this sandbox
            break
        status = _run_record(ctl, fds)
        try:
            _clean(modes, config["private_ipc"])
        except Exception:
            traceback.print_exc()
            ctl.send(json.dumps({"status": status, "retire": True}).encode())
            break
        ctl.send(json.dumps({"status": status}).encode())
    _kill_descendants()


def _protect() -> None:
    """Not dumpable, a child subreaper, killed when its parent dies; SIGINT kills instead of raising."""
    for option, value in ((_PR_SET_DUMPABLE, 0), (_PR_SET_CHILD_SUBREAPER, 1), (_PR_SET_PDEATHSIG, signal.SIGKILL)):
        if _LIBC.prctl(option, value, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"prctl({option}, {value}) failed")
    # A KeyboardInterrupt sent by candidate code would end F or H with a traceback, which reads as our
    # bug; death by the signal reads as what it is (every fork inherits this).
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run_record(ctl, fds) -> int:
    """Fork H on the record's (stdin, stdout, stderr, report) pipes and fork workers for it until it
    exits; H's exit status (-N: killed by signal N)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)  # H asks for workers here
    harness = os.fork()
    if harness == 0:
        _be_the_harness(ctl, ours, theirs, fds)
    theirs.close()
    for fd in fds:
        os.close(fd)
    events, pidfd = select.poll(), os.pidfd_open(harness)
    try:
        _hand_worker(ours)  # the first one unasked: it starts while H reads the tests
        events.register(ours, select.POLLIN)
        events.register(pidfd, select.POLLIN)
        while (status := _reap(harness)) is None:
            for fd, _ in events.poll():
                if fd != ours.fileno():
                    continue  # H exited: _reap sees it
                if _request(ours) == b"spawn":
                    _hand_worker(ours)
                else:  # H closed its end
                    events.unregister(ours)
        return status
    finally:
        ours.close()
        os.close(pidfd)


def _be_the_harness(ctl, ours, theirs, fds) -> None:
    code = 1
    try:
        ctl.close()
        ours.close()
        stdin, stdout, stderr, report = fds
        for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
            os.dup2(fd, target)
            os.close(fd)
        judge.main(report, theirs)
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


def _hand_worker(sock) -> None:
    """Fork a worker (from F, so it holds neither code nor tests) and send H its end of a fresh socket."""
    mine, its = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        candidate.worker(its)
    its.close()
    try:
        socket.send_fds(sock, [json.dumps({"pid": pid}).encode()], [mine.fileno()])
    except OSError:  # H is gone: the worker sees its socket close and exits
        pass
    mine.close()


def _request(sock) -> bytes:
    try:
        return sock.recv(64)
    except OSError:
        return b""


def _reap(harness: int) -> int | None:
    """Reap finished workers; H's exit status once H has exited, else None."""
    while True:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == harness:
            return os.waitstatus_to_exitcode(status)
        if pid == 0:
            return None


def _clean(modes: dict[str, int], private_ipc: bool) -> None:
    _kill_descendants()
    for folder, mode in modes.items():
        if os.stat(folder).st_mode & 0o7777 != mode:  # candidate code took its permissions away (it owns it)
            os.chmod(folder, mode)
        _empty(folder)
    if private_ipc:
        _remove_ipc_objects()


def _kill_descendants() -> None:
    """SIGKILL every live process below F, sleep until each has exited, reap; again until none is left."""
    while True:
        doomed = select.poll()
        pidfds = []
        for pid in _descendants(os.getpid()):
            try:
                pidfds.append(os.pidfd_open(pid))  # a pidfd names this process, never a later one with its pid
            except ProcessLookupError:
                continue
            except OSError:  # out of descriptors (more processes than fds): kill it unwatched, look again
                _kill_unwatched(pid)
                continue
            signal.pidfd_send_signal(pidfds[-1], signal.SIGKILL)
            doomed.register(pidfds[-1], select.POLLIN)
        while pidfds:  # readable once the process has exited (no busy loop while the dying need the CPU)
            for fd, _ in doomed.poll():
                doomed.unregister(fd)
                pidfds.remove(fd)
                os.close(fd)
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:  # no children at all: as F is the subreaper, no descendants either
            return


def _kill_unwatched(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def _descendants(root: int) -> list[int]:
    """Live (not zombie) processes below `root`, from /proc."""
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            state, parent = stat[stat.rfind(")") + 2 :].split()[:2]
            if state not in "ZX":
                parents[int(name)] = int(parent)
    found, frontier = [], {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier}
        found += frontier
    return found


def _empty(folder: str) -> None:
    """Remove everything inside `folder`, whatever permissions candidate code left on it."""
    for entry in os.scandir(folder):
        if entry.is_dir(follow_symlinks=False):
            os.chmod(entry.path, 0o700)
            _empty(entry.path)
            os.rmdir(entry.path)
        else:
            os.unlink(entry.path)


def _remove_ipc_objects() -> None:
    """Remove the System V shared memory, message queues and semaphores of this sandbox's IPC namespace."""
    removers = {"shm": lambda i: _LIBC.shmctl(i, _IPC_RMID, None), "msg": lambda i: _LIBC.msgctl(i, _IPC_RMID, None),
                "sem": lambda i: _LIBC.semctl(i, 0, _IPC_RMID)}
    for kind, remove in removers.items():
        with open(f"/proc/sysvipc/{kind}") as f:
            ids = [int(line.split()[1]) for line in f.readlines()[1:]]
        for ident in ids:
            if remove(ident) != 0:
                raise OSError(ctypes.get_errno(), f"could not remove System V {kind} {ident}")
