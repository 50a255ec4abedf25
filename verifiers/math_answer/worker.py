"""The math-verify worker process: reads {"gold", "pred"} lines on stdin, writes one verdict line each.

It runs in its own interpreter (started by pool.py), with an address-space cap, stdout reserved for
replies, and math-verify's own timeouts switched off: its `signal.alarm` timeout only works on a main
thread, so the parent enforces the deadline from outside by killing this process. It exits when its
parent is gone. Deliberately not here: deadlines, restarts and the parent side of the pipe (pool.py).
"""

import json
import os
import sys
import threading
import time

from .extract import quote

WORKER_MEMORY_BYTES = 2 << 30  # address-space cap of the math-verify worker process
ORPHAN_POLL_S = 1.0  # how often the worker checks that its parent is still there
ERROR_CHARS = 200  # an exception's text is cut to this many characters in `details`


def serve() -> None:
    """Worker main loop: one JSON request per stdin line, one JSON reply per stdout line."""
    import logging
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = WORKER_MEMORY_BYTES if hard == resource.RLIM_INFINITY else min(hard, WORKER_MEMORY_BYTES)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the reply stream
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    import math_verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its "timeout disabled" warning: we time out
    _reply(replies, {"ready": True})
    while line := sys.stdin.readline():
        request = json.loads(line)
        _reply(replies, check(math_verify, request["gold"], request["pred"]))


def _reply(stream, message: dict) -> None:
    stream.write(json.dumps(message) + "\n")
    stream.flush()


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(ORPHAN_POLL_S)
    os._exit(0)


def check(math_verify, gold: str, pred: str) -> dict:
    """Parse and compare with math-verify; its internal timeouts are off, the parent enforces ours."""
    try:
        gold_parsed, why = _parse(math_verify, gold)
        if not gold_parsed:
            return {"verdict": "error", "details": f"math-verify could not parse gold {quote(gold)}{why}"}
        pred_parsed, why = _parse(math_verify, pred)
        if not pred_parsed:  # model text that is not maths is a wrong answer, not a verifier fault
            return {"verdict": "fail", "details": f"math-verify could not parse extracted {quote(pred)}{why}"}
        same = math_verify.verify(gold_parsed, pred_parsed, timeout_seconds=None, raise_on_error=True)
    except MemoryError:
        return {"verdict": "memory", "details": f"math-verify exceeded {WORKER_MEMORY_BYTES >> 20} MiB"}
    except Exception as e:  # comparing two parsed answers crashed: a counted error verdict, never a silent 0
        return {"verdict": "error", "details": f"math-verify raised {type(e).__name__}: {str(e)[:ERROR_CHARS]}"}
    details = f"math-verify: extracted {quote(pred)} {'==' if same else '!='} gold {quote(gold)}"
    return {"verdict": "pass" if same else "fail", "details": details}


def _parse(math_verify, text: str) -> tuple[list, str]:
    """math-verify's parse of `$text$`, and " (ExceptionName)" when it raised (MemoryError propagates)."""
    try:
        return math_verify.parse(f"${text}$", parsing_timeout=None, raise_on_error=True), ""
    except MemoryError:
        raise
    except Exception as e:
        return [], f" ({type(e).__name__})"
