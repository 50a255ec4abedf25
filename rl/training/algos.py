"""Training objectives by name (`train.algo`): what the trainer learns from, and what the sampler must give.

- `sft`: likelihood of distinct verified paths (rejection-sampling fine-tuning, RFT / STaR).
- `grpo`: clipped policy gradient on every leaf, group-normalised leaf rewards as advantages.
- `tree`: the same loss with TreeRL's per-span advantages; needs a branching policy (an unbranched
  tree's spans are whole chains, where the rule says nothing GRPO does not).
Policy-gradient objectives drop trees whose leaves all got the same reward (dynamic sampling); those
trees still reach the SFT export. What the trainer does with an objective's items (their weight, the passes
before an update, the loss) is the entry's `objective` (rl/training/objectives.py); the loss math lives in
rl/training/losses.py, the advantages in rl/training/advantages.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from branchrl.tree import Tree

from .advantages import PGSample, grpo_samples, informative, tree_samples
from .objectives import LIKELIHOOD, POLICY_GRADIENT, Likelihood, PolicyGradient


@dataclass(frozen=True)
class Algo:
    name: str
    policy_gradient: bool                                   # False: likelihood on verified paths
    needs_branching: bool                                   # refuses the `independent` branch policy
    samples: Callable[[Tree, str], list[PGSample]] | None   # tree, shared_spans -> leaf samples
    objective: Likelihood | PolicyGradient                  # the trainer's side: items, weights, loss


ALGOS = {
    "sft": Algo("sft", policy_gradient=False, needs_branching=False, samples=None, objective=LIKELIHOOD),
    "grpo": Algo("grpo", policy_gradient=True, needs_branching=False, samples=grpo_samples, objective=POLICY_GRADIENT),
    "tree": Algo("tree", policy_gradient=True, needs_branching=True, samples=tree_samples, objective=POLICY_GRADIENT),
}


def pg_batch(algo: Algo, trees: list[Tree], shared_spans: str, max_trees: int) -> tuple[list[PGSample], int]:
    """Leaf samples of the first max_trees informative trees (dynamic sampling may have over-sampled);
    returns them and how many trees carried no signal and were dropped."""
    kept = [t for t in trees if informative(t)]
    return [s for t in kept[:max_trees] for s in algo.samples(t, shared_spans)], len(trees) - len(kept)
