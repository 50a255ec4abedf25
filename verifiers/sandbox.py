"""Start a process in an OS sandbox, and read pipes through caps: the process-isolation part.

`start_sandboxed(bwrap, argv, limits, binds, pass_fds)` starts `argv` under bubblewrap when `bwrap`
(from `bwrap_path()`) is given: new user, PID, network (loopback only), IPC and UTS namespaces; a
read-only bind of /usr (and the /bin, /lib symlinks) as the whole system, no /etc, no /home, /dev
read-only; size-capped private tmpfs /tmp, /work (the working directory) and /dev/shm, and a private
/dev/mqueue (together `SCRATCH`, the only writable places); a cleared environment;
`--die-with-parent`, `--new-session`, all capabilities dropped. When the host runs as root it first
drops to `nobody` (uid 65534), because the kernel never enforces RLIMIT_NPROC for root. rlimits
(address space, file size, open files, core size; processes in the fallback) are set in the child
before exec; CPU time is limited per record inside (the sandbox is long-lived). Every sandbox is
started from one thread that lives as long as this process, because --die-with-parent follows the
thread that started bwrap, and callers' threads come and go. `read_capped` feeds a stdin pipe and
drains output pipes through their caps (the excess is read and dropped, never buffered) until EOF
or a deadline; `kill_sandbox` SIGKILLs the process group (under bwrap the PID namespace then takes
every descendant with it).

Without bwrap the command still runs with rlimits and its own session, and a warning says once that
isolation is reduced (no network, filesystem or PID isolation).

Deliberately not here: what the command is and how long it lives (warm_sandbox.py), and what its
output means (python_tests.py). Nothing here raises for anything the sandboxed code does.
"""

import logging
import os
import queue
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from functools import lru_cache

log = logging.getLogger(__name__)

NOBODY = 65534  # uid/gid the sandbox runs as when the host is root
WORKDIR = "/work"  # the sandboxed code's working directory and HOME: a private tmpfs under bwrap
SCRATCH = ("/tmp", WORKDIR, "/dev/shm", "/dev/mqueue")  # the writable places inside bwrap, all private
STDERR_TAIL_BYTES = 600  # the end of a sandbox's stderr quoted when it died without a report
HOST_MEMORY_HEADROOM_MB = 512  # address space for bwrap and the interpreter above the per-record limit
_MiB = 1 << 20
PIPE_CHUNK_BYTES = 1 << 16  # one read or write on a sandbox pipe (the pipe buffer's size)


@dataclass(frozen=True)
class Limits:
    memory_mb: int = 512  # address space of the sandboxed processes
    nproc: int = 32  # processes (with bwrap: per sandbox, counted in its own user namespace)
    fsize_mb: int = 16  # largest file any process may write
    nofile: int = 64  # open file descriptors per process
    tmpfs_mb: int = 64  # size of each private tmpfs (/tmp, /work and /dev/shm) under bwrap
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
    args += ["--cap-drop", "ALL", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", WORKDIR]
    args += _system_binds()
    for source, dest in binds:
        args += ["--ro-bind", source, dest]
    args += ["--proc", "/proc", "--dev", "/dev", *size, "--tmpfs", "/dev/shm", "--mqueue", "/dev/mqueue"]
    args += [*size, "--tmpfs", "/tmp", *size, "--tmpfs", WORKDIR]
    args += ["--remount-ro", "/", "--remount-ro", "/dev", "--chdir", WORKDIR, "--", *argv]
    return args


def _preexec(limits: Limits, fallback: bool):
    """Runs in the child between fork and exec: drop root, then set the rlimits."""

    def apply() -> None:
        if os.geteuid() == 0:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        pairs = [
            (resource.RLIMIT_FSIZE, limits.fsize_mb * _MiB),
            (resource.RLIMIT_NOFILE, limits.nofile),
            (resource.RLIMIT_CORE, 0),
            (resource.RLIMIT_AS, (limits.memory_mb + HOST_MEMORY_HEADROOM_MB) * _MiB),
        ]
        if fallback:  # with bwrap this is set inside, where it counts per sandbox
            pairs.append((resource.RLIMIT_NPROC, limits.nproc * 4))
        for which, value in pairs:
            resource.setrlimit(which, (value, value))

    return apply


def start_sandboxed(bwrap: str | None, argv: list[str], limits: Limits, binds: list[tuple[str, str]] = (),
                    pass_fds: tuple[int, ...] = ()) -> subprocess.Popen:
    """Start argv in the sandbox (bwrap if given, else rlimits only); stdin and stdout are /dev/null,
    stderr a pipe. Raises OSError when it cannot be started (our problem, not the sandboxed code's)."""
    command = bwrap_argv(bwrap, argv, limits, list(binds)) if bwrap else argv
    return _STARTER.popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=pass_fds,
        env={"PATH": "/usr/bin:/bin"}, cwd="/", start_new_session=True, preexec_fn=_preexec(limits, bwrap is None),
    )


class _Starter:
    """Runs `subprocess.Popen` on one daemon thread per process, which lives until the process ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()

    def popen(self, *args, **kwargs) -> subprocess.Popen:
        with self._lock:
            if self._owner != os.getpid():  # first use, or a forked copy of us that lacks the thread
                self._owner, self._jobs = os.getpid(), queue.SimpleQueue()
                threading.Thread(target=self._serve, args=(self._jobs,), name="sandbox-starter", daemon=True).start()
            done: Future = Future()
            self._jobs.put((done, args, kwargs))
        return done.result()

    @staticmethod
    def _serve(jobs: queue.SimpleQueue) -> None:
        while True:
            done, args, kwargs = jobs.get()
            try:
                done.set_result(subprocess.Popen(*args, **kwargs))
            except BaseException as e:
                done.set_exception(e)


_STARTER = _Starter()


def read_capped(stdin_fd: int, stdin: bytes, outputs: dict[str, tuple[int, int]], deadline: float,
                ) -> tuple[dict[str, tuple[bytes, bool]], bool]:
    """Write `stdin` to stdin_fd (then close it) and read each output {name: (fd, cap)} until EOF on all.

    Returns ({name: (the first `cap` bytes, whether more came)}, timed_out); the excess is read and
    dropped. Stops at `deadline` (time.monotonic()) with timed_out=True. Closes no output fd.
    """
    kept = {name: [b"", False] for name in outputs}
    sel = selectors.DefaultSelector()
    for name, (fd, _) in outputs.items():
        sel.register(fd, selectors.EVENT_READ, name)
    pending = memoryview(stdin)
    os.set_blocking(stdin_fd, False)
    sel.register(stdin_fd, selectors.EVENT_WRITE, None)
    stdin_open, open_reads = True, len(outputs)
    try:
        while open_reads:
            left = deadline - time.monotonic()
            if left <= 0:
                return {k: tuple(v) for k, v in kept.items()}, True
            for key, _ in sel.select(left):
                if key.data is None:
                    try:
                        pending = pending[os.write(stdin_fd, pending[:PIPE_CHUNK_BYTES]) :]
                    except BrokenPipeError:
                        pending = pending[len(pending) :]
                    except BlockingIOError:
                        pass
                    if not pending:
                        sel.unregister(stdin_fd)
                        os.close(stdin_fd)
                        stdin_open = False
                    continue
                chunk = os.read(key.fd, PIPE_CHUNK_BYTES)
                if not chunk:
                    sel.unregister(key.fd)
                    open_reads -= 1
                    continue
                out, cap = kept[key.data], outputs[key.data][1]
                room = cap - len(out[0])
                out[0] += chunk[: max(room, 0)]
                out[1] = out[1] or len(chunk) > room
        return {k: tuple(v) for k, v in kept.items()}, False
    finally:
        sel.close()
        if stdin_open:
            os.close(stdin_fd)


def kill_sandbox(proc: subprocess.Popen) -> int:
    """SIGKILL the sandbox's process group (bwrap's namespace takes everything below it); its exit code."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return proc.wait()


def sandbox_python() -> str:
    """The interpreter run inside the sandbox: the system python3 (readable by `nobody`), else ours."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate):
            return candidate
    return os.path.realpath(sys.executable)
