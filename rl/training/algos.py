"""Training objectives by name (`train.algo`): what the trainer learns from, and what the sampler must give.

- `sft`: likelihood of distinct verified paths (rejection-sampling fine-tuning, RFT / STaR).
- `grpo`: clipped policy gradient on every leaf, group-normalised leaf rewards as advantages.
- `tree`: the same loss with TreeRL's per-span advantages; needs a branching policy (an unbranched
  tree's spans are whole chains, where the rule says nothing GRPO does not).

Each `Algo` owns its behaviour: which config combinations it refuses (`problems`), when a step has
sampled enough (`enough`: policy-gradient objectives drop trees whose leaves all got the same reward,
dynamic sampling, and sample more), what its update batch is (`batch`) and what the trainer does with that
batch (`objective`, rl/training/objectives.py: item weights, passes before an update, the loss). Dropped trees
still reach the SFT export. The loss math lives in rl/training/losses.py, the advantages in
rl/training/advantages.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from branchrl.rollout.policies import POLICIES
from branchrl.tree import Tree

from .advantages import PGSample, grpo_samples, informative, tree_samples
from .objectives import LIKELIHOOD, POLICY_GRADIENT, Likelihood, PolicyGradient


@dataclass(frozen=True)
class Algo:
    name: str
    needs_branching: bool                                   # refuses a branch policy whose trees never fork
    samples: Callable[[Tree, str], list[PGSample]] | None   # tree, shared_spans -> leaf samples; None: likelihood
    objective: Likelihood | PolicyGradient                  # the trainer's side: items, weights, loss

    @property
    def policy_gradient(self) -> bool:
        """Learns from every leaf with advantages and the rollout's log-probs (else: from verified paths)."""
        return self.samples is not None

    def problems(self, cfg) -> list[str]:
        """What in the config this objective cannot run with, each as a sentence saying what to change."""
        out = []
        if self.needs_branching and not POLICIES[cfg.branch.policy].branches:
            out.append(f"train.algo={self.name} needs a branching policy (branch.policy=entropy or eptree); "
                       f"with branch.policy={cfg.branch.policy} use train.algo=grpo")
        r = cfg.rollout
        if self.policy_gradient and (r.top_p < 1 or r.top_k > 0):
            out.append(f"rollout.top_p={r.top_p} / rollout.top_k={r.top_k} truncate what rollouts sample from, but "
                       f"train.algo={self.name}'s loss compares against the untruncated policy at the temperature; "
                       "use rollout.top_p=1 and rollout.top_k=0, or train.algo=sft")
        return out

    def enough(self, trees: list[Tree], prompts_per_step: int) -> bool:
        """Whether a step's trees carry enough signal: prompts_per_step informative trees (dynamic sampling)
        for a policy-gradient objective; any verified path will do for a likelihood one."""
        return not self.policy_gradient or sum(map(informative, trees)) >= prompts_per_step

    def batch(self, trees: list[Tree], verified: list[tuple[list[int], list[int]]], shared_spans: str,
              max_trees: int) -> tuple[list, int]:
        """The update batch and how many trees were dropped from it. Policy gradient: the leaf samples of the
        first max_trees informative trees (dynamic sampling may have over-sampled); likelihood: the verified
        (prompt_ids, completion_ids) paths pruning chose."""
        if not self.policy_gradient:
            return list(verified), 0
        kept = [t for t in trees if informative(t)]
        return [s for t in kept[:max_trees] for s in self.samples(t, shared_spans)], len(trees) - len(kept)


ALGOS = {
    "sft": Algo("sft", needs_branching=False, samples=None, objective=LIKELIHOOD),
    "grpo": Algo("grpo", needs_branching=False, samples=grpo_samples, objective=POLICY_GRADIENT),
    "tree": Algo("tree", needs_branching=True, samples=tree_samples, objective=POLICY_GRADIENT),
}
