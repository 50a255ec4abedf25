"""`independent`: N chains per prompt, no forks (the GRPO baseline). Roots share one prefill."""

from __future__ import annotations


class Independent:
    def sample(self, sampler, trees, settings) -> None:
        rows, logits = sampler.start_roots(trees, settings.roots)
        sampler.grow(trees, rows, logits)


POLICY = Independent()
