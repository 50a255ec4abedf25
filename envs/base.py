"""What an environment is: problems (train / warm-start / held-out eval) plus how to verify an answer.

An environment never imports `branchrl` internals outside `branchrl.verifiers`; it hands the rollout
side prompts and hands the verifier pool records in the `branchrl verify` format. It names its
verifier rather than calling it, so records cross process boundaries as plain data.
Deliberately not here: checking answers (the verifier's job) and tokenizers or models.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Callable

from branchrl.verifiers.registry import get_verifier

BUCKETS = 100  # a problem key hashes to one of this many buckets; SPLITS assigns bucket ranges
SPLITS = {"eval": range(0, 10), "warm_start": range(10, 20), "train": range(20, BUCKETS)}
DRAWS_PER_PROBLEM, EXTRA_DRAWS = 200, 1000  # a procedural env gives up after 200 n + 1000 candidates


class EnvError(ValueError):
    """The env name cannot be resolved, or the env rejects its arguments (what to change is in the message)."""


@dataclass(frozen=True)
class Problem:
    id: str              # stable within the env: provenance and de-duplication key
    prompt: str          # exactly what the policy sees
    answer: str          # gold answer for the verifier
    solution: str = ""   # worked solution (prompt + solution is an SFT example); "" when unknown
    # per-problem verifier fields (a code task's tests and entry point, countdown's numbers and target);
    # merged into the verifier record; left out of hashing so a Problem stays hashable
    extras: dict = field(default_factory=dict, hash=False)


@dataclass
class Environment:
    """Base class: subclasses implement the three problem sources; the verifier is named, not called."""

    name: str
    verifier: str = "math"
    verifier_args: dict = field(default_factory=dict)
    # text that starts the final answer in a completion ("####", "\\boxed"); branch policies do not fork
    # after it, where alternatives could only change the answer, not the reasoning. None: no marker
    answer_marker: str | None = None

    def train_problems(self, n: int, seed: int) -> list[Problem]:
        """n problems for RL step sampling; disjoint from eval_problems and warm_start_problems."""
        raise NotImplementedError

    def warm_start_problems(self, n: int, seed: int) -> list[Problem]:
        """n problems with worked solutions for a short SFT; disjoint from eval and train problems."""
        raise NotImplementedError

    def eval_problems(self, n: int) -> list[Problem]:
        """The first n held-out problems (the same list for every seed, so runs compare)."""
        raise NotImplementedError

    def split_size(self, split: str) -> int | None:
        """How many problems a split ("train", "warm_start", "eval") holds, where the env knows (a data set);
        None where it is unbounded or unknown (a procedural env): a walk over the whole split needs a count."""
        return None

    def signature(self, completion: str) -> str:
        """What makes two verified completions the same sample: the verifier's signature (normalised
        code for python_tests, whitespace-normalised text by default); an env may override it."""
        return get_verifier(self.verifier).signature(completion)

    def verifier_record(self, problem: Problem, completion: str) -> dict:
        """The record `branchrl verify` (and the verifier pool) checks for one completion.

        Per-problem verifier fields come from `problem.extras`; problems with no gold answer (code
        tasks, checked by their tests) have answer "", which is left out of the record.
        """
        answer = {"answer": problem.answer} if problem.answer else {}
        return {"verifier": self.verifier, "completion": completion, **answer, **self.verifier_args, **problem.extras}


def bucket(key: str) -> int:
    """0..BUCKETS-1 from the key's text (whitespace-normalised); the same text always lands in the same bucket."""
    return int(hashlib.sha256(" ".join(key.split()).encode()).hexdigest(), 16) % BUCKETS


def hashed_split(key: str) -> str:
    """The split (eval 10% / warm_start 10% / train 80%) a problem key falls in, for every seed."""
    b = bucket(key)
    return next(name for name, buckets in SPLITS.items() if b in buckets)


class ProceduralEnvironment(Environment):
    """Problems from a seeded generator; each problem id falls in exactly one split by `split_of(id)`,
    so train, warm-start and eval never overlap whatever the seed. Subclasses give `candidate`, and
    override `split_of` when two ids name one problem (`12+34` and `34+12`)."""

    too_few_hint = "ask for fewer"  # the end of the error when a split holds fewer problems than asked

    def split_of(self, problem_id: str) -> str:
        return hashed_split(problem_id)

    def candidate(self, rng: random.Random) -> tuple[str, Callable[[], "Problem | None"]] | None:
        """One random (problem id, build the problem) or None; build() may return None to reject it."""
        raise NotImplementedError

    def _draw(self, split: str, n: int, seed: int) -> list[Problem]:
        rng = random.Random(f"{split}:{seed}")
        seen: dict[str, Problem] = {}
        for _ in range(DRAWS_PER_PROBLEM * n + EXTRA_DRAWS):
            if len(seen) == n:
                break
            drawn = self.candidate(rng)
            if drawn is None:
                continue
            pid, build = drawn
            if pid not in seen and self.split_of(pid) == split and (problem := build()) is not None:
                seen[pid] = problem
        if len(seen) < n:  # the config asks for more than the split holds: the user's to change
            raise EnvError(f"env {self.name!r}: found only {len(seen)} distinct {split} problems, asked for {n}; "
                           f"{self.too_few_hint}")
        return list(seen.values())

    def train_problems(self, n: int, seed: int) -> list[Problem]:
        return self._draw("train", n, seed)

    def warm_start_problems(self, n: int, seed: int) -> list[Problem]:
        return self._draw("warm_start", n, seed)

    def eval_problems(self, n: int) -> list[Problem]:
        return self._draw("eval", n, seed=0)
