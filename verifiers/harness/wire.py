"""How the processes inside the sandbox talk: length-prefixed JSON frames, and the two ways an exchange ends.

`send`/`recv` carry one JSON message each over a socket (harness <-> worker); a
reply bigger than MAX_MESSAGE, unreadable, or cut off is the sender's fault (`WorkerDied`), and a
reply that does not come by the deadline is `Timeout`. `read_stdin_message` reads the host's frames
(same header) from fd 0.

Deliberately not here: what the messages mean (plain_data.py encodes values, worker_client.py and
candidate.py hold the two ends of the conversation).
"""

import json
import os
import select
import struct
import time

MAX_MESSAGE = 8 << 20  # bytes; a bigger reply from the worker is a failure, not a buffer
MAX_NAMES = 1000  # top-level names of the candidate module the worker reports (the rest are not listed)
MAX_EXCEPTION_CHARS = 500  # an exception's text crossing the socket is cut to this
MAX_LOAD_ERROR_CHARS = 2000  # why the candidate code did not load, as the report carries it
_HEADER = struct.Struct(">I")


class Timeout(BaseException):
    """The record's time budget ran out (BaseException: test code's `except Exception` must not eat it)."""


class WorkerDied(BaseException):
    """The worker (or the forkserver that forks workers) went away or broke the protocol: the candidate's fault."""


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


def read_stdin_message():
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
