"""Generation engine: a plain-PyTorch decoder with its own KV cache and a row `select` that forks.

Imports torch and safetensors only (no transformers, ray, verifiers or envs), so it is usable as a
library on its own. Token sampling (temperature, top-k, top-p) and stop strings are pure helpers
here; the branching policy that drives the engine lives in `branchrl.sampler`.
"""

from .decoder import Decoder, UnsupportedModel
from .engine import Engine, PromptTooLong, check_prompts
from .sampling import Sample, SamplingParams, entropy, sample, sampling_logprobs
from .stop import find_stop

__all__ = ["Decoder", "Engine", "PromptTooLong", "Sample", "SamplingParams", "UnsupportedModel", "check_prompts",
           "entropy", "find_stop", "sample", "sampling_logprobs"]
