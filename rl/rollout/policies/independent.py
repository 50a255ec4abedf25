"""`independent`: N chains per prompt, no forks (the GRPO baseline). Roots share one prefill."""

from __future__ import annotations


class Independent:
    branches = False   # never forks: every tree is roots chains

    def sample(self, sampler, trees, branch) -> None:
        sampler.grow(trees, sampler.root_prefixes(trees, branch.roots))


POLICY = Independent()
