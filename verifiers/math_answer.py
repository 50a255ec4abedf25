"""Math answer verifier: extract the model's final answer, then compare it with the gold answer.

Extraction is ours: the last `\\boxed{...}` (nested braces handled), else the rest of the last GSM8K
`#### x` line, else what follows the last "answer is". So are the rules math-verify is too lenient
about: several different boxed answers, or a hedge such as "42 or 43", fail. Plain numbers and simple
fractions (most RL leaves) are compared exactly in-process with `fractions.Fraction`: the fast path.
Everything else goes to `math_verify` in one persistent worker process that we kill when the
deadline passes, because math-verify's own `signal.alarm` timeout only works on a main thread and
sympy can hang or eat memory on model text.

Deliberately not here: no `eval` of model text, no partial credit, no tolerance for near-equal
numbers on the fast path, no ×100 "percent" equivalence, no retry of an answer that timed out.
The module is named `math_answer` so it can never shadow the standard library's `math`.
"""

import atexit
import json
import os
import queue
import re
import select
import subprocess
import sys
import threading
import time
from fractions import Fraction

from .result import Result, failed, passed

VERSION = "math-1"  # bump when extraction or comparison semantics change; stored with every sample
MAX_NUMBER_CHARS = 100  # longer "numbers" fail instead of being converted (arithmetic-size guard)
MAX_ANSWER_CHARS = 1000  # longer extracted answers fail instead of going to sympy
WORKER_MEMORY_BYTES = 2 << 30  # address-space cap of the math-verify worker process
WORKER_START_TIMEOUT_S = 60.0  # importing sympy on a loaded machine; not counted in timeout_s

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_GSM8K = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_IS = re.compile(r"answer is[:\s]*([^\n]*)", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.\s")
_LATEX_SPACING = re.compile(r"\\[,!;: ]")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_NUMBER_THEN_WORDS = re.compile(r"([+-]?\d[\d,]*(?:\.\d+)?)(?:\s+[A-Za-z]{3,})+")
_HEDGE = re.compile(r"\b(?:or|either)\b", re.IGNORECASE)
_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)", re.ASCII)
_FRACTION = re.compile(r"([+-]?\d+)/(\d+)", re.ASCII)
_LATEX_FRACTION = re.compile(r"([+-]?)\\[dt]?frac\{(\d+)\}\{(\d+)\}", re.ASCII)


# ---------------------------------------------------------------------------------------- extraction
def _closing_brace(text: str, open_at: int) -> int | None:
    """Index of the brace closing `text[open_at]`, skipping `\\{` `\\}`; None if not closed soon enough."""
    depth, i, stop = 0, open_at, min(len(text), open_at + MAX_ANSWER_CHARS + 2)
    while i < stop:
        char = text[i]
        if char == "\\":
            i += 2
            continue
        depth += (char == "{") - (char == "}")
        if depth == 0:
            return i
        i += 1
    return None


def boxed_contents(text: str) -> list[str]:
    """Contents of the top-level `\\boxed{...}` in order; an unclosed one yields what follows it."""
    found, pos = [], 0
    while (match := _BOXED.search(text, pos)) is not None:
        close = _closing_brace(text, match.end() - 1)
        if close is None:  # unclosed or over-long: keep a prefix that fails the length check if long
            found.append(text[match.end() : match.end() + MAX_ANSWER_CHARS + 1])
            break
        found.append(text[match.end() : close])
        pos = close + 1
    return found


def extract_final_answer(text: str) -> str | None:
    """The last `\\boxed{}` content, else the rest of the last `####` line, else the last "answer is X"."""
    boxed = boxed_contents(text)
    if boxed:
        return boxed[-1]
    for pattern in (_GSM8K, _ANSWER_IS):
        hits = pattern.findall(text)
        if hits:
            return _SENTENCE_END.split(hits[-1])[0]
    return None


def normalise(answer: str) -> str:
    """Drop `$`, LaTeX spacing, extra whitespace, a trailing period, thousands commas, trailing words."""
    s = answer.replace("\\$", "").replace("$", "")
    s = " ".join(_LATEX_SPACING.sub("", s).split())
    s = re.sub(r"\.$", "", s).strip()
    if (match := _NUMBER_THEN_WORDS.fullmatch(s)) is not None:  # "42 apples" -> "42"
        s = match.group(1)
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    return s


def _short(s: str, limit: int = 80) -> str:
    """Quote an answer for `details` (not repr: LaTeX backslashes stay single)."""
    return "'" + (s if len(s) <= limit else s[:limit] + "...") + "'"


def _prediction(completion: str) -> tuple[str, str | None]:
    """(normalised final answer, None) or ("", why it fails before any comparison)."""
    distinct = sorted({normalise(b) for b in boxed_contents(completion)})
    if len(distinct) > 1:
        return "", "several different \\boxed{} answers: " + ", ".join(map(_short, distinct[:4]))
    raw = extract_final_answer(completion)
    pred = normalise(raw) if raw is not None else ""
    if not pred:
        return "", "no final answer found"
    if len(pred) > MAX_ANSWER_CHARS:
        return "", f"final answer longer than {MAX_ANSWER_CHARS} characters"
    if _HEDGE.search(pred):
        return "", f"hedged answer {_short(pred)}"
    return pred, None


# --------------------------------------------------------------------------------------- fast path
def _as_number(s: str) -> Fraction | None:
    """Exact value of a plain decimal, `a/b` or `\\frac{a}{b}`; None for anything else."""
    if _DECIMAL.fullmatch(s):
        return Fraction(s)
    if (m := _FRACTION.fullmatch(s)) is not None and int(m.group(2)) != 0:
        return Fraction(int(m.group(1)), int(m.group(2)))
    if (m := _LATEX_FRACTION.fullmatch(s)) is not None and int(m.group(3)) != 0:
        return Fraction(int(m.group(1) + m.group(2)), int(m.group(3)))
    return None


def _compare_numbers(pred: str, gold: str) -> Result | None:
    """Exact comparison when both sides are plain numbers; None sends the pair to math-verify."""
    shaped = [_DECIMAL.fullmatch(s) or _FRACTION.fullmatch(s) or _LATEX_FRACTION.fullmatch(s) for s in (pred, gold)]
    if not all(shaped):
        return None
    for name, s in (("extracted", pred), ("gold", gold)):
        if len(s) > MAX_NUMBER_CHARS:
            return failed("fail", f"{name} number longer than {MAX_NUMBER_CHARS} characters")
    p, g = _as_number(pred), _as_number(gold)
    if p is None or g is None:  # zero denominator: let math-verify decide what 1/0 means
        return None
    relation = "==" if p == g else "!="
    details = f"extracted {_short(pred)} {relation} gold {_short(gold)}"
    return passed(details) if p == g else failed("fail", details)


# ------------------------------------------------------------------------------ slow path (worker)
def _serve() -> None:
    """Worker process main loop: one JSON request per stdin line, one JSON reply per stdout line."""
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
        _reply(replies, _check_in_worker(math_verify, request["gold"], request["pred"]))


def _reply(stream, message: dict) -> None:
    stream.write(json.dumps(message) + "\n")
    stream.flush()


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(0)


def _check_in_worker(math_verify, gold: str, pred: str) -> dict:
    """Parse and compare with math-verify; its internal timeouts are off, the parent enforces ours."""
    try:
        gold_parsed, why = _parse(math_verify, gold)
        if not gold_parsed:
            return {"verdict": "error", "details": f"math-verify could not parse gold {_short(gold)}{why}"}
        pred_parsed, why = _parse(math_verify, pred)
        if not pred_parsed:  # model text that is not maths is a wrong answer, not a verifier fault
            return {"verdict": "fail", "details": f"math-verify could not parse extracted {_short(pred)}{why}"}
        same = math_verify.verify(gold_parsed, pred_parsed, timeout_seconds=None, raise_on_error=True)
    except MemoryError:
        return {"verdict": "memory", "details": f"math-verify exceeded {WORKER_MEMORY_BYTES >> 20} MiB"}
    except Exception as e:  # comparing two parsed answers crashed: a counted error verdict, never a silent 0
        return {"verdict": "error", "details": f"math-verify raised {type(e).__name__}: {str(e)[:200]}"}
    details = f"math-verify: extracted {_short(pred)} {'==' if same else '!='} gold {_short(gold)}"
    return {"verdict": "pass" if same else "fail", "details": details}


def _parse(math_verify, text: str) -> tuple[list, str]:
    """math-verify's parse of `$text$`, and " (ExceptionName)" when it raised (MemoryError propagates)."""
    try:
        return math_verify.parse(f"${text}$", parsing_timeout=None, raise_on_error=True), ""
    except MemoryError:
        raise
    except Exception as e:
        return [], f" ({type(e).__name__})"


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
            self._ensure_ready()
            return self._round_trip({"gold": gold, "pred": pred}, timeout_s)

    def close(self) -> None:
        with self._lock:
            if self._owner == os.getpid():
                self._stop()

    def _ensure_ready(self) -> None:
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
                code = self._stop()
                raise RuntimeError(f"math-verify worker did not start (exit code {code}); is math-verify installed?")
            self._ready = True

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
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise _WorkerExited()
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def _spawn(self) -> None:
        # A fresh interpreter (not fork): safe under Ray and threads, and it never re-imports __main__.
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        code = f"import sys; sys.path[:] = [p for p in sys.path if p]; import {__name__} as m; m._serve()"
        pipe = subprocess.PIPE
        self._proc = subprocess.Popen([sys.executable, "-c", code], stdin=pipe, stdout=pipe, env=env, bufsize=0)
        self._buffer, self._ready = b"", False

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


class SlowPathPool:
    """Up to `size` workers, started lazily; the most recently used free one serves next, so
    sequential callers keep one process and only concurrent callers start more."""

    def __init__(self, size: int) -> None:
        self.workers = [SlowPathWorker() for _ in range(size)]
        self._free: queue.LifoQueue = queue.LifoQueue()
        for worker in reversed(self.workers):
            self._free.put(worker)

    def compare(self, gold: str, pred: str, timeout_s: float) -> Result:
        worker = self._free.get()
        try:
            return worker.compare(gold, pred, timeout_s)
        finally:
            self._free.put(worker)

    def close(self) -> None:
        for worker in self.workers:
            worker.close()


# BRANCHRL_MATH_WORKERS caps the math-verify processes per verifying process (default: CPU count, <= 4).
_WORKERS = SlowPathPool(int(os.environ.get("BRANCHRL_MATH_WORKERS") or min(4, os.cpu_count() or 1)))
atexit.register(_WORKERS.close)


# ------------------------------------------------------------------------------------------ public
def verify_math(completion: str, answer: str, timeout_s: float = 5.0, numeric: bool = False) -> Result:
    """Check the final answer in `completion` against the gold `answer` (plain or GSM8K `#### x`).
    numeric=True: the answer must be written as a number; an expression that equals it ("5+5",
    "x=10") fails, so a task that asks for a computed value cannot be passed by restating it."""
    start = time.perf_counter()
    result = _judge(completion, answer, timeout_s, numeric)
    return result.with_seconds(time.perf_counter() - start)


def _judge(completion: str, answer: str, timeout_s: float, numeric: bool = False) -> Result:
    if not (isinstance(timeout_s, (int, float)) and 0 < timeout_s < float("inf")):
        return failed("error", f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    gold_raw = extract_final_answer(answer)
    gold = normalise(gold_raw if gold_raw is not None else answer)
    if not gold:
        return failed("error", "gold answer is empty")
    pred, problem = _prediction(completion)
    if problem is not None:
        return failed("fail", problem)
    fast = _compare_numbers(pred, gold)
    if fast is None and numeric:
        return failed("fail", f"extracted {_short(pred)} is not a plain number (numeric answers only)")
    return fast if fast is not None else _WORKERS.compare(gold, pred, timeout_s)
