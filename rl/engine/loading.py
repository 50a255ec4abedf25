"""Pick the engine for a model: the plain decoder where it supports the architecture, else the HF fallback.

`load_engine` takes an HF config dict (weights arrive later through `engine.decoder.load_state_dict`,
as the rollout worker does); `load_checkpoint` reads an HF checkpoint dir (config.json and
*.safetensors). Falling back logs exactly one warning naming the reason. Nothing else is decided here.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file

from .decoder import Decoder, UnsupportedModel
from .engine import Engine
from .hf_engine import HFDecoder, HFEngine

log = logging.getLogger(__name__)


def load_engine(config: dict, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                pad_id: int = 0, max_seq_len: int | None = None, decode: str = "eager") -> Engine | HFEngine:
    """An engine with unloaded (random) weights for this config; `max_seq_len` and `decode` as in `Engine`
    (the fallback always decodes eagerly)."""
    try:
        return Engine(Decoder(config, device, dtype), pad_id, max_seq_len, decode=decode)
    except UnsupportedModel as e:
        log.warning("%s; using the generic transformers engine instead (slower)", e)
        return HFEngine(HFDecoder(config, device, dtype), pad_id, max_seq_len)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                    pad_id: int = 0, max_seq_len: int | None = None) -> Engine | HFEngine:
    """An engine holding the weights of the HF checkpoint dir at `path`."""
    path = Path(path)
    engine = load_engine(json.loads((path / "config.json").read_text()), device, dtype, pad_id, max_seq_len)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {path}")
    engine.decoder.load_state_dict({k: v for f in files for k, v in load_file(f).items()})
    return engine
