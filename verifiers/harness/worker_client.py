"""The harness's end of the candidate's worker: get one from the forkserver, send calls, decode replies.

One worker at a time; after a death (timeout, crash, `os._exit`, memory) the next request gets a fresh
one. Workers are forked by the forkserver, which never holds code or tests: the forkserver hands over
the record's first worker unasked (it starts while the harness reads the tests) and one more per
"spawn" asked; the worker's first request carries the code and the limits. Replies are decoded
by plain_data.py, so only exact plain data or opaque handles come back; an exception raised in the
worker comes back as its builtin type (or `CandidateError`), rebuilt here from its name and text.

Deliberately not here: which calls to make (the test code in judge.py decides) and the worker side
(candidate.py).
"""

import builtins
import json
import os
import select
import signal
import socket
import time

from .plain_data import decode, encode, encode_argument
from .wire import MAX_EXCEPTION_CHARS, MAX_LOAD_ERROR_CHARS, MAX_NAMES, Timeout, WorkerDied, recv, send


class CandidateError(Exception):
    """An exception raised by candidate code whose type is not a builtin exception."""


class WorkerClient:
    """H's end of one worker at a time; gets a fresh one from the forkserver after a death."""

    def __init__(self, forkserver, deadline: float, code: str, limits: dict):
        self.forkserver, self.deadline, self.code, self.limits = forkserver, deadline, code, limits
        self.sock, self.pid, self.generation = None, None, 0
        self.memory_hit = False
        self.load_error = None
        self.builtin_names = set()  # builtin names the candidate defines at top level (its claim)

    def spawn(self, first_request):
        if time.monotonic() >= self.deadline:
            raise Timeout()
        self.generation += 1
        try:
            if self.generation > 1:  # the first worker comes unasked
                self.forkserver.send(b"spawn")
            ready = select.select([self.forkserver], [], [], max(0.0, self.deadline - time.monotonic()))[0]
            data, fds, _, _ = socket.recv_fds(self.forkserver, 1024, 1) if ready else (None, [], 0, None)
        except OSError:
            data, fds = b"", []
        if data is None:
            raise Timeout()
        if not data or len(fds) != 1:
            raise WorkerDied("the forkserver is gone (was it killed?)")
        self.pid = json.loads(data)["pid"]
        self.sock = socket.socket(fileno=fds[0])
        return self._exchange({**first_request, "code": self.code, "limits": self.limits})

    def ensure_loaded(self):
        if self.load_error is not None:
            raise CandidateError(self.load_error)
        if self.sock is None:
            reply = self.spawn({"op": "load"})
            if "load_error" in reply:
                self.load_error = str(reply["load_error"])[:MAX_LOAD_ERROR_CHARS]
                self.kill()
                raise CandidateError(self.load_error)
            names = reply.get("names")
            if type(names) is list:
                self.builtin_names = {n for n in names[:MAX_NAMES] if type(n) is str and hasattr(builtins, n)}

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
            raise _rebuild_exception(*(str(p)[:MAX_EXCEPTION_CHARS] for p in reply["raise"]), client=self)
        self.kill()
        raise WorkerDied("malformed reply")

    def call(self, target, args, kwargs):
        message = {
            "op": "call",
            "f": target,
            "args": encode(list(args), encode_argument),
            "kwargs": encode(dict(kwargs), encode_argument),
        }
        return self.request(message)

    def setattr(self, target, name, value):
        if type(name) is not str:
            raise TypeError("attribute name must be a string")
        self.request({"op": "setattr", "f": target, "name": name, "value": encode(value, encode_argument)})

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
