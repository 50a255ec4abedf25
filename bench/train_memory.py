"""Trainer memory per rank for one optimizer step, and speed on a GPU: ddp and fsdp, 1 and 2 ranks, activation
checkpointing off and on, through the real Trainer (FSDP2, fp32 master weights, bf16 compute, SFT loss).

A model of the shape (random weights, from a config; nothing is downloaded) is written once as an HF directory
under --workdir and each case loads it, like a run with model.path. Each rank is its own process (gloo on CPU,
NCCL on GPUs), trains --warmup steps, then --steps timed ones on --batch sequences of --seq tokens. Per rank:
peak memory during the timed steps (GPU: torch.cuda.max_memory_allocated; CPU: the process's peak RSS, sampled
every 5 ms, with glibc told to return freed blocks: MALLOC_ENV) and train_state_bytes_per_rank (parameters +
gradients + optimizer state it holds). On a GPU also tokens/s and MFU: model FLOPs 6N per token + 12*L*d per
attended position (the ledger's rule; activation checkpointing's recompute not counted) over the peak dense
bf16 FLOP/s of the GPU.

    .venv/bin/python bench/train_memory.py --layers 4            # CPU, the 0.5B width with 4 of its 24 layers
    .venv/bin/python bench/train_memory.py                       # CPU, the whole 0.5B shape (about 16 GB for ddp x2)
    python bench/train_memory.py --shape qwen2.5-1.5b --batch 8 --seq 2048 --ranks 1 --sharding fsdp \
        --steps 3                                                # GPU: speed and memory at the 1.5B shape

Lines starting with ROW are for bench/gpu_check.sh. Record results in docs/BENCHMARKS.md. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

PEAK_BF16 = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12, "B200": 2250e12}   # dense FLOP/s
SHAPES = {   # name: Qwen2 config kwargs (the engine bench's shapes, plus tiny for --cpu-smoke)
    "tiny": dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=False),
    "qwen2.5-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True),
}


def model_dir(shape: str, layers: int | None, seq: int, workdir: Path) -> Path:
    """An HF directory of the shape with random bf16 weights and the project's char tokenizer, made once."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from branchrl.models import build_char_tokenizer

    kwargs = dict(SHAPES[shape], max_position_embeddings=max(seq, 128))
    kwargs["num_hidden_layers"] = layers or kwargs["num_hidden_layers"]
    path = workdir / f"{shape}-{kwargs['num_hidden_layers']}l-{kwargs['max_position_embeddings']}"
    if not (path / "config.json").exists():
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(Qwen2Config(**kwargs), dtype=torch.bfloat16).save_pretrained(path)
        build_char_tokenizer().save_pretrained(path)
    return path


class PeakRss:
    """The process's resident set size, sampled in a thread: its peak between start() and stop()."""

    def __init__(self):
        self.peak, self.running = 0, False

    def _read(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def start(self) -> int:
        self.peak, self.running = self._read(), True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self.peak

    def _run(self) -> None:
        while self.running:
            self.peak = max(self.peak, self._read())
            time.sleep(0.005)

    def stop(self) -> int:
        self.running = False
        self.thread.join()
        return max(self.peak, self._read())


def config(args, case: dict, path: Path, cuda: bool):
    from branchrl.config import load_config

    threads = max(1, (os.cpu_count() or 2) // case["ranks"])
    return load_config(None, [
        f"model.path={path}", "model.dtype=bfloat16", "train.algo=sft", f"train.workers={case['ranks']}",
        f"train.sharding={case['sharding']}", f"train.activation_checkpointing={case['ac']}", "train.lr=1e-5",
        f"train.batch_size={args.batch}", f"train.threads={threads}", f"train.gpus={1 if cuda else 0}"])


def measure(trainer, seqs, cuda: bool) -> tuple[float, int]:
    """(seconds, peak bytes) of one train() call."""
    rss = PeakRss()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        rss.start()
    t0 = time.perf_counter()
    trainer.train(seqs)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return seconds, torch.cuda.max_memory_allocated() if cuda else rss.stop()


def rank_main(rank: int, args, case: dict, path: Path, address: str, out: Path) -> None:
    from transformers.utils import logging as hf_logging

    from branchrl.training.trainer import Trainer

    hf_logging.disable_progress_bar()

    cuda = torch.cuda.is_available() and not args.cpu
    if cuda:
        torch.cuda.set_device(rank)
    trainer = Trainer(config(args, case, path, cuda))
    if case["ranks"] > 1:
        trainer.join(address, rank, case["ranks"])
    gen = torch.Generator().manual_seed(0)   # every rank builds the same batch (the trainer takes its slice)
    vocab = trainer.model.config.vocab_size
    seqs = [([1], torch.randint(4, vocab, (args.seq - 1,), generator=gen).tolist()) for _ in range(args.batch)]
    for _ in range(args.warmup):
        trainer.train(seqs)
    timings = [measure(trainer, seqs, cuda) for _ in range(args.steps)]
    seconds = sorted(t for t, _ in timings)[len(timings) // 2]
    record = {"rank": rank, "seconds": seconds, "peak_bytes": max(p for _, p in timings),
              "state_bytes": _state_bytes(trainer), "flops": _flops(trainer, args)}
    (out / f"rank{rank}.json").write_text(json.dumps(record))


def _state_bytes(trainer) -> int:
    from branchrl.training.parallel import state_bytes

    return state_bytes(trainer.model, trainer.optimizer)


def _flops(trainer, args) -> float:
    """Model FLOPs of one step on the whole batch (all ranks): the ledger's 6N + 12*L*d*context rule."""
    from branchrl.data.ledger import Ledger
    from branchrl.tree import attended_positions

    info = trainer.describe()
    ledger = Ledger(info.flop_params, info.layers, info.hidden, info.head_params)
    return 3.0 * ledger.forward_flops(args.batch * args.seq, args.batch * attended_positions(args.seq))


# glibc keeps freed blocks under its (dynamic, up to 32 MiB) mmap threshold on the heap, where RSS cannot see them
# go; a fixed 128 KiB threshold maps every tensor-sized block, so a rank's RSS follows the memory it really holds
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(128 << 10)}


def run_case(args, case: dict, path: Path) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    os.environ.update(MALLOC_ENV)   # read by each rank's C library at start
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(rank_main, args=(args, case, path, address, Path(tmp)), nprocs=case["ranks"],
                           start_method="spawn")
        ranks = [json.loads((Path(tmp) / f"rank{r}.json").read_text()) for r in range(case["ranks"])]
    seconds = max(r["seconds"] for r in ranks)
    return {**case, "peak_gib": [r["peak_bytes"] / 2**30 for r in ranks],
            "state_gib": max(r["state_bytes"] for r in ranks) / 2**30, "seconds": seconds,
            "tokens_per_s": args.batch * args.seq / seconds, "flops": ranks[0]["flops"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="qwen2.5-0.5b", choices=sorted(SHAPES))
    ap.add_argument("--layers", type=int, default=0, help="decoder layers (0 = the shape's)")
    ap.add_argument("--batch", type=int, default=4, help="sequences per step")
    ap.add_argument("--seq", type=int, default=1024, help="tokens per sequence")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--sharding", nargs="+", default=["ddp", "fsdp"], choices=["ddp", "fsdp"])
    ap.add_argument("--ac", nargs="+", default=["false", "true"], choices=["false", "true"],
                    help="activation checkpointing off / on")
    ap.add_argument("--warmup", type=int, default=1,
                    help="untimed steps first: the first step also allocates the optimizer state")
    ap.add_argument("--steps", type=int, default=1, help="timed steps (the median is reported)")
    ap.add_argument("--cpu", action="store_true", help="stay on CPU even when a GPU is there")
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "branchrl-bench-models"))
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and not args.cpu
    path = model_dir(args.shape, args.layers or None, args.seq, Path(args.workdir))
    device = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)"
    peak = next((v for k, v in PEAK_BF16.items() if k in device), 989e12) if cuda else None
    print(f"# {args.shape} ({path.name}), {args.batch}x{args.seq} tokens, bf16 compute, {device}, "
          f"torch {torch.__version__}")
    print("| sharding | ranks | act. ckpt | peak memory per rank (GiB) | state per rank (GiB) | step s | tokens/s "
          "| MFU |")
    print("|---|---|---|---|---|---|---|---|")
    for sharding in args.sharding:
        for ranks in args.ranks:
            for ac in args.ac:
                r = run_case(args, {"sharding": sharding, "ranks": ranks, "ac": ac}, path)
                mfu = f"{100 * r['flops'] / (r['seconds'] * peak * ranks):.1f}%" if peak else "-"
                peaks = " / ".join(f"{p:.2f}" for p in r["peak_gib"])
                print(f"| {sharding} | {ranks} | {'on' if ac == 'true' else 'off'} | {peaks} | {r['state_gib']:.3f} | "
                      f"{r['seconds']:.2f} | {r['tokens_per_s']:.0f} | {mfu} |", flush=True)
                print(f"ROW\ttrainer\t{args.shape} {args.batch}x{args.seq} {sharding} x{ranks} ac {ac}\t"
                      f"{r['tokens_per_s']:.0f} tok/s, MFU {mfu}, peak {peaks} GiB, "
                      f"state {r['state_gib']:.3f} GiB/rank", flush=True)


if __name__ == "__main__":
    main()
