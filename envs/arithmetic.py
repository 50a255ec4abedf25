"""Procedural multi-digit addition with a worked, column-by-column chain of thought.

`457+386=` is answered `7+6=13 5+8+1=14 4+3+1=8 #### 843`: each column's sum (plus the carry),
then the GSM8K-style final answer that the math verifier checks. Every problem falls in exactly one
split by a hash of its operand pair, order ignored (`12+34` and `34+12` share a split), so eval,
warm-start and train problems can never overlap, whatever the seed. It deliberately knows nothing about
tokenizers or models.
"""

from __future__ import annotations

import random

from .base import Problem, ProceduralEnvironment, hashed_split


def split_of(problem_id: str) -> str:
    """'a+b' -> its split; a+b and b+a always land together, so a held-out sum is never seen swapped."""
    key = "+".join(sorted(problem_id.split("+"), key=int))
    return hashed_split(key)


def worked_solution(a: int, b: int) -> str:
    da, db = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        x, y = int(da[i]) if i < len(da) else 0, int(db[i]) if i < len(db) else 0
        total = x + y + carry
        steps.append(f"{x}+{y}+{carry}={total}" if carry else f"{x}+{y}={total}")
        carry = total // 10
    return " ".join(steps) + f" #### {a + b}"


class Arithmetic(ProceduralEnvironment):
    def __init__(self, digits: int = 3):
        if isinstance(digits, bool) or not isinstance(digits, int) or not 1 <= digits <= 12:
            raise ValueError(f"digits must be an integer in 1..12, got {digits!r}")
        # numeric: "#### 45+38" equals the sum too, but restating the question is not solving it
        super().__init__(name="arithmetic", verifier="math", verifier_args={"numeric": True},
                         answer_marker="####")
        self.digits = digits

    def _problem(self, a: int, b: int) -> Problem:
        return Problem(id=f"{a}+{b}", prompt=f"{a}+{b}=", answer=str(a + b), solution=worked_solution(a, b))

    split_of = staticmethod(split_of)
    too_few_hint = "ask for fewer or raise digits"

    def candidate(self, rng: random.Random):
        lo, hi = 10 ** (self.digits - 1), 10**self.digits - 1
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        return f"{a}+{b}", lambda: self._problem(a, b)


def load_environment(digits: int = 3) -> Arithmetic:
    return Arithmetic(digits=digits)
