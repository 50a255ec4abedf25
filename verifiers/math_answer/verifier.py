"""The `math` verifier: the final answer in a completion against the gold answer.

Order of work: validate the record's numbers, read the gold (plain, or GSM8K `#### x`), extract and
screen the prediction (extract.py), compare plain numbers exactly in-process (exact.py), and send
everything else to math-verify in a killable worker process (pool.py, worker.py).
Deliberately not here: `eval` of model text, partial credit, a retry of an answer that timed out.
"""

import math
import time

from ..result import Result, failed
from .exact import compare_numbers
from .extract import extract_final_answer, normalise, prediction, quote
from .pool import POOL

VERSION = "math-1"  # bump when extraction or comparison semantics change; stored with every sample
DEFAULT_TIMEOUT_S = 5.0


def configure(workers: int) -> None:
    """The math verifier's settings: `workers` = math-verify processes this process may run at once
    (default: one per CPU, at most 4). Call it before verifying; it starts nothing by itself."""
    POOL.resize(workers)


def verify_math(completion: str, answer: str, timeout_s: float = DEFAULT_TIMEOUT_S, numeric: bool = False) -> Result:
    """Check the final answer in `completion` against the gold `answer` (plain or GSM8K `#### x`).
    numeric=True: the answer must be written as a number; an expression that equals it ("5+5",
    "x=10") fails, so a task that asks for a computed value cannot be passed by restating it."""
    start = time.perf_counter()
    result = _judge(completion, answer, timeout_s, numeric)
    return result.with_seconds(time.perf_counter() - start)


def _judge(completion: str, answer: str, timeout_s: float, numeric: bool) -> Result:
    if not (isinstance(timeout_s, (int, float)) and 0 < timeout_s < math.inf):
        return failed("error", f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    gold_raw = extract_final_answer(answer)
    gold = normalise(gold_raw if gold_raw is not None else answer)
    if not gold:
        return failed("error", "gold answer is empty")
    pred, problem = prediction(completion)
    if problem is not None:
        return failed("fail", problem)
    fast = compare_numbers(pred, gold)
    if fast is None and numeric:
        return failed("fail", f"extracted {quote(pred)} is not a plain number (numeric answers only)")
    return fast if fast is not None else POOL.compare(gold, pred, timeout_s)
