"""Branch policies by name (`branch.policy: eptree` -> rl/rollout/policies/eptree.py): where a rollout tree forks.

Each policy is a module-level object with `sample(sampler, trees, branch)` that fills the empty trees
using the sampler's primitives (`root_prefixes`, `grow`, `reopen`) under the config's `branch` section,
and says whether its trees fork at all (`branches`: objectives that need forks check it). Third-party
policies are not loaded from entry points yet; the names here are the ones the config accepts.
"""

from __future__ import annotations

from . import entropy, eptree, independent, tool_entropy

POLICIES = {"independent": independent.POLICY, "entropy": entropy.POLICY, "eptree": eptree.POLICY,
            "tool_entropy": tool_entropy.POLICY}
