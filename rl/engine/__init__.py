"""Generation engine: a plain-PyTorch decoder with its own KV cache and a row `select` that forks.

Imports torch and safetensors only (no transformers, ray, verifiers or envs), so it is usable as a
library on its own. Sampling policy (temperature, branching) lives in `branchrl.sampler`.
"""

from .decoder import Decoder, UnsupportedModel
from .engine import Engine

__all__ = ["Decoder", "Engine", "UnsupportedModel"]
