"""Run one untrusted command in an OS sandbox and collect its capped output: the process-isolation part.

`run_sandboxed(argv, stdin, timeout_s, limits)` starts `argv` under bubblewrap when `bwrap` is on PATH:
new user, PID, network (loopback only), IPC and UTS namespaces; a read-only bind of /usr (and the
/bin, /lib symlinks) as the whole system, no /etc, no /home; size-capped private tmpfs /tmp and
/work (the working directory); a cleared environment; `--die-with-parent`, `--new-session`, all
capabilities dropped. When the host runs as root it first drops to `nobody` (uid 65534), because
the kernel never enforces RLIMIT_NPROC for root. rlimits (CPU, address space, file size, open files,
core size; processes in the fallback) are set in the child before exec. From the outside: a
wall-clock deadline after which the whole process group is SIGKILLed (inside bwrap the PID
namespace then takes every descendant with it), and stdout/stderr/report pipes read through a
cap (the excess is drained and dropped, never buffered).

Without bwrap the command still runs with rlimits, its own session and the same deadline, and a
warning says once that isolation is reduced (no network, filesystem or PID isolation).

Deliberately not here: what the command is (python_tests builds the harness command) and what
its output means. Nothing here raises for anything the sandboxed code does.
"""

import logging
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import lru_cache

log = logging.getLogger(__name__)

NOBODY = 65534  # uid/gid the sandbox runs as when the host is root
_MiB = 1 << 20


@dataclass(frozen=True)
class Limits:
    memory_mb: int = 512  # address space of the sandboxed processes
    nproc: int = 32  # processes (with bwrap: per sandbox, counted in its own user namespace)
    fsize_mb: int = 16  # largest file any process may write
    nofile: int = 64  # open file descriptors per process
    tmpfs_mb: int = 64  # size of each private tmpfs (/tmp and /work) under bwrap
    output_bytes: int = 64 * 1024  # kept from each of stdout and stderr; the rest is dropped
    report_bytes: int = 8 * _MiB  # kept from the report pipe


@dataclass(frozen=True)
class Completed:
    returncode: int | None  # None when we killed it at the deadline
    timed_out: bool
    stdout: bytes
    stderr: bytes
    report: bytes  # what the sandboxed command wrote to the report fd
    report_truncated: bool
    seconds: float
    isolation: str  # "bwrap" or "rlimits"


@lru_cache(maxsize=1)
def bwrap_path() -> str | None:
    path = shutil.which("bwrap")
    if path is None:
        log.warning(
            "bubblewrap (bwrap) not found: sandboxed code runs with rlimits only, WITHOUT network, "
            "filesystem or PID isolation. Install the 'bubblewrap' package for the real sandbox."
        )
    return path


@lru_cache(maxsize=1)
def _bwrap_has_size(path: str) -> bool:
    out = subprocess.run([path, "--help"], capture_output=True, text=True).stdout
    return "--size" in out


def _system_binds() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    return args


def bwrap_argv(bwrap: str, argv: list[str], limits: Limits, binds: list[tuple[str, str]]) -> list[str]:
    """The bwrap command line; `binds` are (host path, sandbox path) pairs mounted read-only."""
    size = ["--size", str(limits.tmpfs_mb * _MiB)] if _bwrap_has_size(bwrap) else []
    args = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session"]
    args += ["--cap-drop", "ALL", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/work"]
    args += _system_binds()
    for source, dest in binds:
        args += ["--ro-bind", source, dest]
    args += ["--proc", "/proc", "--dev", "/dev", *size, "--tmpfs", "/tmp", *size, "--tmpfs", "/work"]
    args += ["--remount-ro", "/", "--chdir", "/work", "--", *argv]
    return args


def _preexec(limits: Limits, timeout_s: float, fallback: bool):
    """Runs in the child between fork and exec: drop root, then set the rlimits."""

    def apply() -> None:
        if os.geteuid() == 0:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        cpu = int(timeout_s) + 2  # backstop only: the wall-clock deadline normally acts first
        pairs = [
            (resource.RLIMIT_CPU, cpu, cpu + 1),
            (resource.RLIMIT_FSIZE, limits.fsize_mb * _MiB, None),
            (resource.RLIMIT_NOFILE, limits.nofile, None),
            (resource.RLIMIT_CORE, 0, None),
            (resource.RLIMIT_AS, (limits.memory_mb + 512) * _MiB, None),
        ]
        if fallback:  # with bwrap this is set inside, where it counts per sandbox
            pairs.append((resource.RLIMIT_NPROC, limits.nproc * 4, None))
        for which, soft, hard in pairs:
            resource.setrlimit(which, (soft, soft if hard is None else hard))

    return apply


def run_sandboxed(argv: list[str], stdin: bytes, timeout_s: float, limits: Limits = Limits(),
                  binds: list[tuple[str, str]] = (), report_fd_arg: bool = False) -> Completed:
    """Run argv in the sandbox; if report_fd_arg, the report pipe's fd number is appended to argv."""
    start = time.monotonic()
    report_r, report_w = os.pipe()
    if report_fd_arg:
        argv = [*argv, str(report_w)]
    bwrap = bwrap_path()
    command = bwrap_argv(bwrap, argv, limits, list(binds)) if bwrap else argv
    try:
        proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(report_w,), env={"PATH": "/usr/bin:/bin"}, cwd="/", start_new_session=True,
            preexec_fn=_preexec(limits, timeout_s, fallback=bwrap is None),
        )
    finally:
        os.close(report_w)
    try:
        out, timed_out = _pump(proc, stdin, report_r, start + timeout_s, limits)
    finally:
        _kill_group(proc)
        os.close(report_r)
    return Completed(
        returncode=None if timed_out else proc.returncode, timed_out=timed_out,
        stdout=out["stdout"][0], stderr=out["stderr"][0], report=out["report"][0],
        report_truncated=out["report"][1], seconds=time.monotonic() - start,
        isolation="bwrap" if bwrap else "rlimits",
    )


def _pump(proc, stdin: bytes, report_r: int, deadline: float, limits: Limits):
    """Feed stdin, drain the three output pipes through their caps, until EOF on all or the deadline."""
    caps = {"stdout": limits.output_bytes, "stderr": limits.output_bytes, "report": limits.report_bytes}
    out = {name: [b"", False] for name in caps}
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
    sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
    sel.register(report_r, selectors.EVENT_READ, "report")
    pending = memoryview(stdin)
    os.set_blocking(proc.stdin.fileno(), False)
    sel.register(proc.stdin, selectors.EVENT_WRITE, "stdin")
    open_reads = 3
    try:
        while open_reads:
            left = deadline - time.monotonic()
            if left <= 0:
                return out, True
            for key, _ in sel.select(left):
                if key.data == "stdin":
                    try:
                        pending = pending[os.write(key.fd, pending[: 1 << 16]) :]
                    except (BrokenPipeError, BlockingIOError) as e:
                        pending = pending[len(pending) :] if isinstance(e, BrokenPipeError) else pending
                    if not pending:
                        sel.unregister(proc.stdin)
                        proc.stdin.close()
                    continue
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fileobj)
                    open_reads -= 1
                    continue
                kept = out[key.data]
                room = caps[key.data] - len(kept[0])
                kept[0] += chunk[: max(room, 0)]
                kept[1] = kept[1] or len(chunk) > room
        left = deadline - time.monotonic()
        try:
            proc.wait(timeout=max(left, 0.0))
        except subprocess.TimeoutExpired:
            return out, True
        return out, False
    finally:
        sel.close()
        if not proc.stdin.closed:
            proc.stdin.close()


def _kill_group(proc) -> None:
    """SIGKILL the whole process group (bwrap's namespace takes everything below it), then reap."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    for stream in (proc.stdout, proc.stderr):
        stream.close()


def sandbox_python() -> str:
    """The interpreter run inside the sandbox: the system python3 (readable by `nobody`), else ours."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate):
            return candidate
    return os.path.realpath(sys.executable)
