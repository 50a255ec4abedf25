"""Typed records the driver passes between phases: what the policy is and what a verified leaf is.

A `Leaf` is one finished completion of a rollout tree, with the verifier record it was checked with
and the verifier's `Result`. The driver makes leaves (`loop.verify_leaves`), pruning picks the ones
that become samples (`data.prune`), and the data set's provenance rows are written from them. It holds
no tensors and no policy about what a verdict is worth beyond `reward`.
"""

from __future__ import annotations

from dataclasses import dataclass

from branchrl.tree import Tree
from branchrl.verifiers.result import Result


@dataclass
class Leaf:
    tree: Tree
    node: int                    # the leaf's node id in tree
    ids: list[int]               # completion token ids (the path from the prompt to this leaf)
    text: str                    # the completion decoded, as the verifier saw it
    record: dict                 # what was verified: the env's verifier record (the `branchrl verify` format)
    result: Result | None = None # the verdict, once verified

    @property
    def passed(self) -> bool:
        return self.result is not None and self.result.verdict == "pass"

    @property
    def reward(self) -> float:
        """The leaf's reward for advantages: the verifier's score when it passed, else 0."""
        return self.result.score if self.passed else 0.0

    @property
    def branch_path(self) -> str:
        return self.tree.branch_path(self.node)


@dataclass(frozen=True)
class PolicyInfo:
    """What the driver and the rollout workers need to know about the policy (`Trainer.describe`)."""
    config: dict        # the HF model config, as a dict (the rollout workers build their decoder from it)
    eos_id: int
    pad_id: int
    flop_params: int    # N in the 2N / 6N FLOP rules (`models.count_flop_params`)
    layers: int
    hidden: int
    head_params: int    # LM head parameters (activation-checkpoint recompute leaves the head out)
