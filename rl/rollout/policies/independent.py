"""`independent`: N chains per prompt, no forks (the GRPO baseline). Roots share one prefill."""

from __future__ import annotations


class Independent:
    def sample(self, sampler, trees, settings) -> None:
        sampler.grow(trees, sampler.root_prefixes(trees, settings.roots))


POLICY = Independent()
