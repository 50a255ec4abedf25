"""The one table of accelerator figures the planner uses, each with its source, and the planner's efficiency
defaults with theirs.

Figures are vendor datasheet numbers for dense bf16 (no sparsity), as collected in shared/ANCHORS.md
("Hardware figures for planning"). Nothing here is measured by this project; docs/BENCHMARKS.md has no GPU
measurement yet, so the efficiency defaults cite the measurements ANCHORS.md records and are flagged as
assumptions in every plan. It does not guess figures for GPUs it does not list.
"""

from __future__ import annotations

from dataclasses import dataclass

from branchrl.config import ConfigError


@dataclass(frozen=True)
class Gpu:
    name: str
    bf16_flops: float      # peak dense bf16 FLOP/s
    hbm_bytes_per_s: float
    memory_bytes: float
    source: str


GPUS = {
    "a100": Gpu("A100 SXM 80 GB", 312e12, 2.04e12, 80e9, "NVIDIA A100 datasheet (SXM 80 GB), via shared/ANCHORS.md"),
    "h100": Gpu("H100 SXM", 989e12, 3.35e12, 80e9, "NVIDIA H100 datasheet (SXM), via shared/ANCHORS.md"),
    "h200": Gpu("H200 SXM", 989e12, 4.8e12, 141e9, "NVIDIA H200 datasheet (SXM), via shared/ANCHORS.md"),
    "b200": Gpu("B200 (HGX)", 2.25e15, 8e12, 180e9, "NVIDIA HGX B200 datasheet, via shared/ANCHORS.md"),
}

# Defaults of the roofline's efficiencies, with where each number comes from (all assumptions for a target GPU)
DECODE_EFFICIENCY = 0.24   # share of the weight + live-KV read floor a decode step reaches
DECODE_EFFICIENCY_SOURCE = ("assumption: 24% of the read floor, a bare CUDA-graph decode step on an H100 (Qwen2.5-0.5B "
                            "shape, batch 256), shared/ANCHORS.md; not yet measured in docs/BENCHMARKS.md")
TRAIN_MFU = 0.34
TRAIN_MFU_SOURCE = ("assumption: 34.1% MFU, chunked-loss training of a 1.5B model (8 x 2048 tokens), "
                    "shared/ANCHORS.md; not yet measured in docs/BENCHMARKS.md")
PREFILL_MFU = 0.34
PREFILL_MFU_SOURCE = "assumption: prefill is a forward pass of the same compute-bound kind as training (TRAIN_MFU)"
DECODE_BATCH = 256
DECODE_BATCH_SOURCE = "assumption: the batch ANCHORS.md's decode efficiency was measured at (256 sequences)"
NET_GBPS = 400.0
NET_GBPS_SOURCE = "assumption: one 400 Gb/s InfiniBand NDR port per GPU inside a site, for the weight broadcast"
MEMORY_USABLE = 0.9        # of a GPU's memory for weights + KV cache / training state (the rest: activations, runtime)
TRAIN_STATE_BYTES_PER_PARAM = 16   # fp32 master weight, gradient and two Adam moments (trainer.py's layout)
WEIGHT_BYTES_PER_PARAM = 2         # bf16 weights on the inference group and on the wire


def gpu(name: str) -> Gpu:
    if name not in GPUS:
        raise ConfigError(f"unknown --gpu {name!r}; choose one of {', '.join(GPUS)}")
    return GPUS[name]
