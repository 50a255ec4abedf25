"""`echo`: copy a number. `218=` is answered `#### 218`, checked by the math verifier.

A smoke-test task, not a benchmark: a tiny model built from a config learns it from a few dozen
worked examples in seconds (a 2-layer, 64-wide model warm-started on 32 problems answers about 40%
of sampled leaves right), so a short run always has verified samples, mixed rewards and updates to
test the whole pipeline with, whatever the seed. Every number falls in one split by its hash, like
every procedural env here. It knows nothing about tokenizers or models.
"""

from __future__ import annotations

import random

from .base import Problem, ProceduralEnvironment, hashed_split


class Echo(ProceduralEnvironment):
    def __init__(self, digits: int = 3):
        if isinstance(digits, bool) or not isinstance(digits, int) or not 1 <= digits <= 12:
            raise ValueError(f"digits must be an integer in 1..12, got {digits!r}")
        super().__init__(name="echo", verifier="math", verifier_args={"numeric": True}, answer_marker="####")
        self.digits = digits

    split_of = staticmethod(hashed_split)
    too_few_hint = "ask for fewer or raise digits"

    def candidate(self, rng: random.Random):
        n = rng.randint(10 ** (self.digits - 1), 10**self.digits - 1)
        return str(n), lambda: Problem(id=str(n), prompt=f"{n}=", answer=str(n), solution=f"#### {n}")


def load_environment(digits: int = 3) -> Echo:
    return Echo(digits=digits)
