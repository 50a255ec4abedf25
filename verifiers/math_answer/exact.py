"""The fast path: plain numbers and simple fractions compared exactly, in-process, with `Fraction`.

Most RL leaves (GSM8K, arithmetic) end in a plain number, and comparing those needs no sympy.
Deliberately not here: any tolerance for near-equal numbers, ×100 "percent" equivalence, or anything
that is not a decimal, `a/b` or `\\frac{a}{b}` (those go to math-verify in the worker process).
"""

import re
from fractions import Fraction

from ..result import Result, failed, passed
from .extract import quote

MAX_NUMBER_CHARS = 100  # longer "numbers" fail instead of being converted (arithmetic-size guard)

_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)", re.ASCII)
_FRACTION = re.compile(r"([+-]?\d+)/(\d+)", re.ASCII)
_LATEX_FRACTION = re.compile(r"([+-]?)\\[dt]?frac\{(\d+)\}\{(\d+)\}", re.ASCII)


def is_plain_number(s: str) -> bool:
    """A decimal, `a/b` or `\\frac{a}{b}`, as written (its size is not checked here)."""
    return any(pattern.fullmatch(s) for pattern in (_DECIMAL, _FRACTION, _LATEX_FRACTION))


def as_number(s: str) -> Fraction | None:
    """Exact value of a plain decimal, `a/b` or `\\frac{a}{b}`; None for anything else."""
    if _DECIMAL.fullmatch(s):
        return Fraction(s)
    if (m := _FRACTION.fullmatch(s)) is not None and int(m.group(2)) != 0:
        return Fraction(int(m.group(1)), int(m.group(2)))
    if (m := _LATEX_FRACTION.fullmatch(s)) is not None and int(m.group(3)) != 0:
        return Fraction(int(m.group(1) + m.group(2)), int(m.group(3)))
    return None


def compare_numbers(pred: str, gold: str) -> Result | None:
    """Exact comparison when both sides are plain numbers; None sends the pair to math-verify."""
    if not (is_plain_number(pred) and is_plain_number(gold)):
        return None
    for name, s in (("extracted", pred), ("gold", gold)):
        if len(s) > MAX_NUMBER_CHARS:
            return failed("fail", f"{name} number longer than {MAX_NUMBER_CHARS} characters")
    p, g = as_number(pred), as_number(gold)
    if p is None or g is None:  # zero denominator: let math-verify decide what 1/0 means
        return None
    details = f"extracted {quote(pred)} {'==' if p == g else '!='} gold {quote(gold)}"
    return passed(details) if p == g else failed("fail", details)
