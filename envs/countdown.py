"""Countdown (as in TinyZero): combine the given numbers with + - * / to hit a target.

A problem is `count` numbers in 1..max_number and a target in 1..max_target that some expression
over all of them reaches with positive whole intermediate results. The worked solution spells out
each step and ends with the expression: `25-5=20 20*4=80 #### (25-5)*4`; the `countdown` verifier
checks any expression the model writes (each number at most once, or exactly once with use_all).
The problem id is the numbers in prompt order and the target (`25,5,4=80`); its split comes from a
hash of the numbers sorted plus the target, so a reordered held-out problem is never trained on.
Deliberately not here: checking answers (that is `branchrl.verifiers.countdown`) and targets no
expression reaches.
"""

from __future__ import annotations

import random

from .base import Problem, ProceduralEnvironment, hashed_split

PROMPT = ("Using the numbers {numbers}, write an arithmetic expression that equals {target}. You may use "
          "+ - * / and parentheses, and {rule}. End your reply with a line `#### <expression>`.")

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
# (value, expression text, "" for a given number or the op that made it, the steps that built it)
Item = tuple[int, str, str, tuple[str, ...]]


def split_of(problem_id: str) -> str:
    numbers, target = problem_id.split("=")
    key = ",".join(sorted(numbers.split(","), key=int)) + "=" + target
    return hashed_split(key)


def _operand(item: Item, op: str, right: bool) -> str:
    """Parenthesise a sub-expression only where precedence needs it: (a+b)*c, a-(b+c), a/(b*c)."""
    _, text, inner, _ = item
    if not inner:
        return text
    weaker = _PRECEDENCE[inner] < _PRECEDENCE[op]
    non_associative = right and op in "-/" and _PRECEDENCE[inner] == _PRECEDENCE[op]
    return f"({text})" if weaker or non_associative else text


def combine(a: Item, b: Item) -> list[Item]:
    """Every positive whole result of a op b (commutative ops once), each with the steps that built it."""
    x, y = a[0], b[0]
    if x < y:
        a, b, x, y = b, a, y, x
    out = [(x + y, "+"), (x * y, "*")]
    if x > y:
        out.append((x - y, "-"))
    if y > 1 and x % y == 0:
        out.append((x // y, "/"))
    return [(v, f"{_operand(a, op, False)}{op}{_operand(b, op, True)}", op, (*a[3], *b[3], f"{x}{op}{y}={v}"))
            for v, op in out]


def solve(numbers: list[int], target: int, use_all: bool) -> tuple[str, list[str]] | None:
    """The first expression (and its steps) that hits target, searching pairs in a fixed order."""
    def search(items: list[Item]) -> tuple[str, list[str]] | None:
        for value, text, _, steps in items:
            if value == target and (len(items) == 1 or not use_all):
                return text, list(steps)
        for i in range(len(items)):
            for j in range(i + 1, len(items)):
                rest = items[:i] + items[i + 1:j] + items[j + 1:]
                for item in combine(items[i], items[j]):
                    found = search(rest + [item])
                    if found:
                        return found
        return None
    return search([(n, str(n), "", ()) for n in numbers])


class Countdown(ProceduralEnvironment):
    def __init__(self, count: int = 4, max_number: int = 99, max_target: int = 100, use_all: bool = False):
        for name, value, lo, hi in [("count", count, 2, 5), ("max_number", max_number, 2, 10_000),
                                    ("max_target", max_target, 1, 1_000_000)]:
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")
        if not isinstance(use_all, bool):
            raise ValueError(f"use_all must be true or false, got {use_all!r}")
        super().__init__(name="countdown", verifier="countdown", verifier_args={"use_all": use_all},
                         answer_marker="####")
        self.count, self.max_number, self.max_target, self.use_all = count, max_number, max_target, use_all

    def problem(self, numbers: list[int], target: int) -> Problem | None:
        """The problem for these numbers and target, or None when no expression reaches it."""
        found = solve(numbers, target, self.use_all)
        if found is None:
            return None
        expression, steps = found
        rule = "each number exactly once" if self.use_all else "each number at most once"
        return Problem(id=f"{','.join(map(str, numbers))}={target}",
                       prompt=PROMPT.format(numbers=", ".join(map(str, numbers)), target=target, rule=rule),
                       answer=str(target), solution=" ".join(steps) + f" #### {expression}",
                       extras={"numbers": list(numbers), "target": target})

    def _numbers_and_target(self, rng: random.Random) -> tuple[list[int], int] | None:
        """Random numbers and the value of a random expression over all of them (None if out of range)."""
        numbers = [rng.randint(1, self.max_number) for _ in range(self.count)]
        items: list[Item] = [(n, str(n), "", ()) for n in numbers]
        while len(items) > 1:
            a, b = (items.pop(rng.randrange(len(items))) for _ in range(2))
            items.append(rng.choice(combine(a, b)))
        target = items[0][0]
        return (numbers, target) if 1 <= target <= self.max_target and target not in numbers else None

    split_of = staticmethod(split_of)
    too_few_hint = "ask for fewer or raise max_number / max_target"

    def candidate(self, rng: random.Random):
        drawn = self._numbers_and_target(rng)
        if drawn is None:
            return None
        return f"{','.join(map(str, drawn[0]))}={drawn[1]}", lambda: self.problem(*drawn)


def load_environment(count: int = 4, max_number: int = 99, max_target: int = 100, use_all: bool = False) -> Countdown:
    """count numbers in 1..max_number, a target in 1..max_target; use_all: every number exactly once."""
    return Countdown(count=count, max_number=max_number, max_target=max_target, use_all=use_all)
