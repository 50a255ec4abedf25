"""Generation engine: a plain-PyTorch decoder over a paged KV cache, with a row `select` that forks
(sharing pages) and `admit` for rows joining mid-flight; decode steps run eager, compiled, or as CUDA
graphs (`DECODE_MODES`).

`load_engine` / `load_checkpoint` pick it, or the slower HF fallback for other architectures. Imports
torch and safetensors only (transformers only once a fallback is built; never ray, verifiers or
envs), so it is usable as a library on its own. Token sampling (temperature, top-k, top-p) and stop
strings are pure helpers here; the branching policy that drives the engine lives in `branchrl.rollout.sampler`.
"""

from .decoder import Decoder, UnsupportedModel
from .engine import Engine, PromptTooLong, check_prompts
from .hf_engine import HFDecoder, HFEngine
from .loading import load_checkpoint, load_engine
from .paged_kv import PagedKV
from .sampling import Sample, SamplingParams, entropy, sample, sampling_logprobs, siblings
from .step import MODES as DECODE_MODES
from .stop import find_stop

__all__ = ["DECODE_MODES", "Decoder", "Engine", "HFDecoder", "HFEngine", "PagedKV", "PromptTooLong", "Sample",
           "SamplingParams", "UnsupportedModel", "check_prompts", "entropy", "find_stop",
           "load_checkpoint", "load_engine", "sample", "sampling_logprobs", "siblings"]
