"""What an environment is: problems (train / warm-start / held-out eval) plus how to verify an answer.

An environment never imports `branchrl` internals outside `branchrl.verifiers`; it hands the rollout
side prompts and hands the verifier pool records in the `branchrl verify` format.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class EnvError(ValueError):
    """The env name cannot be resolved, or the env rejects its arguments (what to change is in the message)."""


@dataclass(frozen=True)
class Problem:
    id: str              # stable within the env: provenance and de-duplication key
    prompt: str          # exactly what the policy sees
    answer: str          # gold answer for the verifier
    solution: str = ""   # worked solution (prompt + solution is an SFT example); "" when unknown


@dataclass
class Environment:
    """Base class: subclasses implement the three problem sources; the verifier is named, not called."""

    name: str
    verifier: str = "math"
    verifier_args: dict = field(default_factory=dict)

    def train_problems(self, n: int, seed: int) -> list[Problem]:
        """n problems for RL step sampling; disjoint from eval_problems and warm_start_problems."""
        raise NotImplementedError

    def warm_start_problems(self, n: int, seed: int) -> list[Problem]:
        """n problems with worked solutions for a short SFT; disjoint from eval and train problems."""
        raise NotImplementedError

    def eval_problems(self, n: int) -> list[Problem]:
        """The first n held-out problems (the same list for every seed, so runs compare)."""
        raise NotImplementedError

    def verifier_record(self, problem: Problem, completion: str) -> dict:
        """The record `branchrl verify` (and the verifier pool) checks for one completion."""
        return {"verifier": self.verifier, "completion": completion, "answer": problem.answer, **self.verifier_args}
