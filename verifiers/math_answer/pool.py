"""The parent side of the math-verify workers: persistent processes, killed at the deadline, replaced.

`SlowPathWorker` owns one worker process (worker.py) and its pipes; a request that outlives its
deadline gets a "timeout" verdict and the process is killed and restarted, so sympy can never hang
a caller. `SlowPathPool` hands callers up to `size` workers (the most recently used free one first,
so sequential callers keep one process). `POOL` is the process-wide pool: it starts nothing until
the first comparison, and its size is the math verifier's `workers` setting (`configure`).
Deliberately not here: what is compared or how (worker.py), and the fast path (exact.py).
"""

import atexit
import json
import os
import queue
import select
import subprocess
import sys
import threading
import time

from ..result import Result, failed, passed

WORKER_START_TIMEOUT_S = 60.0  # importing sympy on a loaded machine; not counted in timeout_s
MAX_DEFAULT_WORKERS = 4  # default pool size: one per CPU, at most this many (each may grow to 2 GiB)
READ_CHUNK_BYTES = 1 << 16


class _WorkerExited(Exception):
    pass


class SlowPathWorker:
    """One persistent math-verify process, killed and replaced on timeout or crash; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._owner = os.getpid()
        self._buffer = b""
        self._ready = False

    def compare(self, gold: str, pred: str, timeout_s: float) -> Result:
        with self._lock:
            problem = self._ensure_ready()
            if problem is not None:
                return failed("error", problem)
            return self._round_trip({"gold": gold, "pred": pred}, timeout_s)

    def close(self) -> None:
        with self._lock:
            if self._owner == os.getpid():
                self._stop()

    def _ensure_ready(self) -> str | None:
        """None once a worker is up and has said it is ready, else why it could not start (our problem)."""
        if self._owner != os.getpid():  # we are a forked copy: that worker belongs to our parent
            self._proc, self._owner = None, os.getpid()
        if self._proc is not None and self._proc.poll() is not None:  # died while idle
            self._stop()
        if self._proc is None:
            self._spawn()
        if not self._ready:
            try:
                line = self._read_line(time.monotonic() + WORKER_START_TIMEOUT_S)
            except _WorkerExited:
                line = None
            if line is None or not json.loads(line).get("ready"):
                return f"math-verify worker did not start (exit code {self._stop()}); is math-verify installed?"
            self._ready = True
        return None

    def _round_trip(self, request: dict, timeout_s: float) -> Result:
        try:
            self._proc.stdin.write((json.dumps(request) + "\n").encode())
            self._proc.stdin.flush()
            line = self._read_line(time.monotonic() + timeout_s)
        except (BrokenPipeError, _WorkerExited):
            return failed("error", f"math-verify worker died (exit code {self._restart()})")
        if line is None:
            self._restart()
            return failed("timeout", f"math-verify took longer than {timeout_s:g} s; worker killed")
        reply = json.loads(line)
        if reply["verdict"] == "memory":
            self._restart()
        return passed(reply["details"]) if reply["verdict"] == "pass" else failed(reply["verdict"], reply["details"])

    def _read_line(self, deadline: float) -> bytes | None:
        """The next reply line, None when the deadline passes first; raises _WorkerExited on EOF."""
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, READ_CHUNK_BYTES)
            if not chunk:
                raise _WorkerExited()
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def _spawn(self) -> None:
        # A fresh interpreter (not fork): safe under Ray and threads, and it never re-imports __main__.
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        pipe = subprocess.PIPE
        self._proc = subprocess.Popen(self.command(), stdin=pipe, stdout=pipe, env=env, bufsize=0)
        self._buffer, self._ready = b"", False

    @staticmethod
    def command() -> list[str]:
        code = f"import sys; sys.path[:] = [p for p in sys.path if p]; from {__package__}.worker import serve; serve()"
        return [sys.executable, "-c", code]

    def _stop(self) -> int | None:
        """Kill the worker (if any) and return its exit code."""
        if self._proc is None:
            return None
        proc, self._proc = self._proc, None
        proc.kill()
        code = proc.wait()
        proc.stdin.close()
        proc.stdout.close()
        return code

    def _restart(self) -> int | None:
        """Kill the worker and start its replacement now, so its sympy import overlaps our caller's work."""
        code = self._stop()
        self._spawn()
        return code


def default_size() -> int:
    return min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1)


class SlowPathPool:
    """Up to `size` workers, made on first use; the most recently used free one serves next, so
    sequential callers keep one process and only concurrent callers start more."""

    def __init__(self, size: int | None = None) -> None:
        self._lock = threading.Lock()
        self._size = size
        self.workers: list[SlowPathWorker] = []
        self._free: queue.LifoQueue | None = None

    @property
    def size(self) -> int:
        """How many processes may run at once (`default_size()` until resized)."""
        return self._size or default_size()

    def resize(self, size: int) -> None:
        """At most `size` processes from now on (meant for start-up); running ones stop after their request."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"math verifier workers must be a positive integer, got {size!r}")
        with self._lock:
            if size == self._size:
                return
            self._size, old, self.workers, self._free = size, self.workers, [], None
        for worker in old:
            worker.close()

    def compare(self, gold: str, pred: str, timeout_s: float) -> Result:
        free = self._queue()  # the queue this worker goes back to, even if a resize replaced it meanwhile
        worker = free.get()
        try:
            return worker.compare(gold, pred, timeout_s)
        finally:
            free.put(worker)

    def close(self) -> None:
        with self._lock:
            workers = list(self.workers)
        for worker in workers:
            worker.close()

    def _queue(self) -> queue.LifoQueue:
        with self._lock:
            if self._free is None:
                self.workers = [SlowPathWorker() for _ in range(self._size or default_size())]
                self._free = queue.LifoQueue()
                for worker in reversed(self.workers):
                    self._free.put(worker)
            return self._free


POOL = SlowPathPool()
atexit.register(POOL.close)
