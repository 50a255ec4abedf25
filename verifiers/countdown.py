"""Countdown verifier (the TinyZero task): does the model's expression reach the target with the given numbers?

The answer is the last `<answer>...</answer>` block, else the rest of the last `#### ` line; an
optional `= <target>` tail is allowed. It is parsed with `ast` and only integer literals, the four
operators + - * / and parentheses are accepted; each literal uses up one of the given numbers (a
multiset: a number given twice may be used twice), and with `use_all` every number must be used.
The value is computed exactly with `fractions.Fraction`, so 7/2*2 is 7 and division by zero fails.

Deliberately not here: `eval` of model text, unary minus, powers, concatenating digits, or any
tolerance: the value must equal the target exactly.
"""

from __future__ import annotations

import ast
import re
import time
from collections import Counter
from fractions import Fraction

from .math_answer.extract import gsm8k_answer
from .result import Result, failed, passed

VERSION = "countdown-1"  # bump when extraction or checking semantics change
MAX_EXPRESSION_CHARS = 200  # longer answers fail before parsing (a 6-number expression is ~30 chars)
DETAILS_CHARS = 300  # `details` is cut to this length

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
        ast.Div: lambda a, b: a / b}


class _Rejected(Exception):
    """The expression breaks a rule; the message says which (model output, so a "fail")."""


def extract_expression(completion: str) -> str | None:
    """The last <answer> block, else the rest of the last `####` line; None when there is neither."""
    tags = _ANSWER_TAG.findall(completion)
    if tags:
        return tags[-1].strip()
    return gsm8k_answer(completion)


def _evaluate(node: ast.AST, used: list[int]) -> Fraction:
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _evaluate(node.left, used), _evaluate(node.right, used)
        if isinstance(node.op, ast.Div) and right == 0:
            raise _Rejected("division by zero")
        return _OPS[type(node.op)](Fraction(left), Fraction(right))
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    raise _Rejected(f"only integers, + - * / and parentheses are allowed, found {type(node).__name__}")


def _parse(expression: str, target: int) -> ast.AST:
    """The expression's tree; a trailing `= target` is checked and dropped."""
    if expression.count("=") == 1:
        expression, claimed = expression.split("=")
        if claimed.strip() != str(target):
            raise _Rejected(f"claims {claimed.strip()!r}, the target is {target}")
    if not expression.strip():
        raise _Rejected("empty expression")
    try:
        return ast.parse(expression.strip(), mode="eval").body
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        raise _Rejected(f"not an arithmetic expression ({type(e).__name__})") from None


def check_expression(expression: str, numbers: list[int], target: int, use_all: bool = False) -> str:
    """A short reason the expression passes; raises _Rejected with the reason it does not."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise _Rejected(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    used: list[int] = []
    value = _evaluate(_parse(expression, target), used)
    extra = Counter(used) - Counter(numbers)
    if extra:
        raise _Rejected(f"uses {sorted(extra.elements())} beyond the given numbers {sorted(numbers)}")
    if use_all and Counter(used) != Counter(numbers):
        raise _Rejected(f"leaves {sorted((Counter(numbers) - Counter(used)).elements())} unused")
    if value != target:
        raise _Rejected(f"{expression} = {value}, not {target}")
    return f"{expression} = {target} using {sorted(used)}"


def verify_countdown(completion: str, numbers: list, target: int, use_all: bool = False) -> Result:
    """Pass when the extracted expression uses only the given numbers and equals `target` exactly."""
    start = time.perf_counter()
    if not all(type(n) is int for n in numbers):  # a bad record is the caller's bug, not the model's
        return failed("error", f"numbers must be a list of integers, got {numbers!r}"[:DETAILS_CHARS])
    expression = extract_expression(completion)
    if expression is None:
        return failed("fail", "no answer found (expected <answer>...</answer> or a '#### ' line)",
                      time.perf_counter() - start)
    try:
        reason = check_expression(expression, numbers, target, use_all)
    except _Rejected as e:
        return failed("fail", str(e)[:DETAILS_CHARS], time.perf_counter() - start)
    return passed(reason, time.perf_counter() - start)
