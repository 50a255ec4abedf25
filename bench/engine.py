"""Engine throughput against transformers `generate`, its decode modes, per-step overhead, and the cost of a fork.

Random weights, forced length (no early EOS), same device and dtype for both. Cases:
- throughput: decode tokens/s for each mode in --decode, against `generate`, and the share of the
  memory-bandwidth floor (each decode step must read the weights once plus the live KV cache).
- graph: throughput with eager and graph decoding (graph = compiled FlexAttention step per batch
  bucket, captured as a CUDA graph on a GPU; compiled, uncaptured on a CPU), with compile/capture time.
- overhead: host time per decode step, as CPU time of the calling thread (`time.thread_time`: waiting
  for a loaded machine's cores does not count): what `Engine.step` spends outside the model call
  (`Decoder.decode` eager; the compiled call compiled, which a GPU replaces by a graph replay), in
  situ and alone (see `overhead`), and how many ATen ops it dispatches there; and the KV bytes a step
  moves against the live KV bytes it must read (`attention.step_bytes`). Use --threads 1.
- branched: the BranchSampler's tokens/s with forks, for each row cap in --max-rows (0 = no cap).
- fork: 8 children from a 1024- and a 1000-token sequence, timed against prefilling it, KV pages in use.
- append: 100 tokens (a tool's output) appended to a live 1,000-token row (`Engine.extend`, a chunked
  prefill into its pages), timed against prefilling 100 and 1,100 tokens.

    .venv/bin/python bench/engine.py --threads 1                               # CPU: tiny demo shape
    .venv/bin/python bench/engine.py --threads 1 --cases overhead --shapes qwen2-1layer --prompt 256 \
        --decode eager compile
    .venv/bin/python bench/engine.py --cases graph --shapes tiny --batches 8 --prompt 16 --new 8   # CPU smoke
    python bench/engine.py --cases graph --shapes qwen2.5-0.5b qwen2.5-1.5b --batches 256 64 --prompt 256 --new 128 \
        --dtype bfloat16                                                                       # GPU

Record results in docs/BENCHMARKS.md with date, device and the exact command. Not a test.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from branchrl.config import BranchConfig
from branchrl.engine import DECODE_MODES, Decoder, Engine, SamplingParams
from branchrl.engine.attention import step_bytes
from branchrl.engine.step import bucket
from branchrl.rollout.sampler import BranchSampler

SHAPES = {  # name: (config class, kwargs)
    # issue 17's overhead shape: one small Qwen2 layer, so the step's bookkeeping is a visible share of it
    "qwen2-1layer": (Qwen2Config, dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                       num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)),
    "tiny": (LlamaConfig, dict(vocab_size=100, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                               num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False)),
    # issue 16's append shape: wide enough that the MLP, not attention over the cache, dominates as in real models
    "small": (LlamaConfig, dict(vocab_size=1000, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                                num_attention_heads=8, num_key_value_heads=8, tie_word_embeddings=False)),
    "qwen2.5-0.5b": (Qwen2Config, dict(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                                       num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                                       tie_word_embeddings=True)),
    "qwen2.5-1.5b": (Qwen2Config, dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                                       num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                                       tie_word_embeddings=True)),
}
CASES = ("throughput", "graph", "overhead", "branched", "fork", "append")
# bytes/s by GPU name, first match wins: the PCIe H100 has HBM2e at 2.0 TB/s, the SXM one HBM3 at 3.35
PEAK_BANDWIDTH = {"H100 PCIe": 2.0e12, "H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bandwidth(device: torch.device) -> float:
    """Peak (GPU, from the name) or measured copy bandwidth (CPU), in bytes/s."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((bw for key, bw in PEAK_BANDWIDTH.items() if key in name), 2.0e12)
    x = torch.empty(64 * 2**20 // 4)
    y = torch.empty_like(x)
    y.copy_(x)
    t0 = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    return 10 * 2 * x.numel() * 4 / (time.perf_counter() - t0)  # read + write


def build(shape: str, max_pos: int, device, dtype):
    cls, kwargs = SHAPES[shape]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cls(**kwargs, max_position_embeddings=max_pos), dtype=dtype)
    return model.to(device).eval()


def make_engine(model, decode: str = "eager", rows: int = 0, tokens: int = 0) -> Engine:
    """An engine holding the model's weights; its pool pre-sized for `rows` rows of `tokens` tokens, so no pool
    growth (which recompiles a compiled step) falls inside a timed loop."""
    decoder = Decoder(model.config.to_dict(), device=model.device, dtype=model.dtype)
    decoder.load_state_dict(model.state_dict())
    engine = Engine(decoder, decode=decode)
    if rows:
        engine.kv.reserve(rows * engine.kv.row_pages(torch.tensor(tokens)).item() + rows, bucket(rows))
    return engine


def engine_tokens_per_s(model, prompts: torch.Tensor, new: int, decode: str = "eager"):
    """(decode tokens/s, prefill seconds, seconds of the warm-up: compiling and capturing included, the last
    step's logits [B, V]) for the engine, greedy, forced length."""
    engine = make_engine(model, decode, len(prompts), prompts.shape[1] + new)
    sync(prompts.device)
    t0 = time.perf_counter()
    logits = engine.start(prompts.tolist(), new)
    for _ in range(2):                                           # warm-up: compiles and captures this bucket
        logits = engine.step(logits.argmax(-1))
    sync(prompts.device)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    logits = engine.start(prompts.tolist(), new)
    sync(prompts.device)
    t1 = time.perf_counter()
    for _ in range(new - 1):
        logits = engine.step(logits.argmax(-1))
    sync(prompts.device)
    return prompts.shape[0] * (new - 1) / (time.perf_counter() - t1), t1 - t0, warm, logits


def overhead(model, prompts: torch.Tensor, new: int, decode: str) -> dict:
    """Per decode step, medians over `new` steps, in this thread's CPU ms: the step; its host part in situ (the
    step less the model call: Decoder.decode eager, the compiled call compiled); its host part alone (the
    same steps with the model call replaced by one returning the last logits: the host's share without the
    model's memory traffic evicting its caches, as on a GPU host); the ATen ops it dispatches outside the
    model call; and the KV bytes the middle step moves."""
    engine = make_engine(model, decode, len(prompts), prompts.shape[1] + 3 * new)
    logits = engine.start(prompts.tolist(), 3 * new)
    for _ in range(2):                                               # warm-up (compiles this bucket)
        logits = engine.step(logits.argmax(-1))
    owner, name = (engine.runner, "compiled") if engine.runner.compiled else (engine.decoder, "decode")
    inner, math = getattr(owner, name), []

    def timed(*args, **kwargs):
        t = time.thread_time()
        out = inner(*args, **kwargs)
        sync(prompts.device)
        math.append(time.thread_time() - t)
        return out

    setattr(owner, name, timed)
    traffic = step_bytes(engine.kv, len(prompts), paged=engine.runner.compiled is not None)
    steps, in_model = step_times(engine, logits, new, math)
    in_situ = [s - m for s, m in zip(steps, in_model)]
    setattr(owner, name, lambda *args, **kwargs: logits)             # the model call removed
    alone, _ = step_times(engine, logits, new, [])
    with OpCounter() as ops:
        engine.step(logits.argmax(-1))
    med = lambda xs: 1e3 * sorted(xs)[len(xs) // 2]  # noqa: E731
    return dict(step_ms=med(steps), host_ms=med(in_situ), alone_ms=med(alone), ops=ops.count, moved=traffic[0],
                live=traffic[1])


def step_times(engine, logits: torch.Tensor, steps: int, math: list[float]) -> tuple[list[float], list[float]]:
    """This thread's CPU seconds in each of `steps` engine steps (greedy tokens), and in the model calls that
    `math` collects during each (none when a CUDA graph replays). The device is synced after the clock stops,
    so on a GPU an asynchronous step counts only its launches."""
    out, model = [], []
    for _ in range(steps):
        token = logits.argmax(-1)
        sync(token.device)
        before, t = len(math), time.thread_time()
        logits = engine.step(token)
        out.append(time.thread_time() - t)
        model.append(sum(math[before:]))
        sync(token.device)
    return out, model


class OpCounter(TorchDispatchMode):
    """Counts the ATen ops dispatched while active."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


@torch.inference_mode()
def generate_tokens_per_s(model, prompts: torch.Tensor, new: int) -> float:
    kwargs = dict(do_sample=False, min_new_tokens=new, max_new_tokens=new, pad_token_id=0)
    model.generate(prompts[:, :8], **{**kwargs, "min_new_tokens": 2, "max_new_tokens": 2})  # warm-up
    sync(prompts.device)
    t0 = time.perf_counter()
    model.generate(prompts, attention_mask=torch.ones_like(prompts), **kwargs)
    sync(prompts.device)
    return prompts.shape[0] * new / (time.perf_counter() - t0)


def floor_tokens_per_s(model, batch: int, prompt: int, new: int, bw: float) -> float:
    """Tokens/s if every decode step only read the weights once and the live KV cache (mean length)."""
    c = model.config
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    head_dim = c.hidden_size // c.num_attention_heads
    kv_bytes = 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * model.dtype.itemsize * (prompt + new / 2)
    return batch / ((weight_bytes + batch * kv_bytes) / bw)


def fork_cost(model, prefix: int, children: int, new: int, repeats: int = 5) -> str:
    """Fork `children` rows from one `prefix`-token sequence vs prefilling it (medians of `repeats`), and KV
    pages in use before the fork, after it, and after `new` decode steps of every child."""
    device = model.device
    engine = make_engine(model)
    prompt = torch.randint(3, model.config.vocab_size, (prefix,)).tolist()
    engine.start([prompt], new)  # warm-up, and the pool reaches its working size
    prefills, forks = [], []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        engine.start([prompt], new)
        sync(device)
        t1 = time.perf_counter()
        engine.select(torch.zeros(children, dtype=torch.long))
        sync(device)
        prefills.append(t1 - t0)
        forks.append(time.perf_counter() - t1)
    prefill, fork = sorted(prefills)[repeats // 2], sorted(forks)[repeats // 2]
    engine.start([prompt], new)
    mib = engine.kv.page_bytes / 2**20
    before = engine.kv.pages_in_use * mib
    engine.select(torch.zeros(children, dtype=torch.long))
    after = engine.kv.pages_in_use * mib
    for _ in range(new):
        engine.step(torch.randint(3, model.config.vocab_size, (children,)))
    decoded = engine.kv.pages_in_use * mib
    return (f"fork {children} from {prefix} tokens: {fork * 1e3:.3f} ms = {100 * fork / prefill:.2f}% of the "
            f"{prefill * 1e3:.1f} ms prefill; KV in use {before:.2f} MiB -> {after:.2f} MiB after the fork -> "
            f"{decoded:.2f} MiB after {new} tokens per child (copying rows: {children * before:.2f} MiB); "
            f"pool {engine.kv.pool_bytes / 2**20:.2f} MiB")


def append_cost(model, row: int = 1000, new: int = 100, repeats: int = 7) -> str:
    """Append `new` tokens to a live `row`-token row vs prefilling `new` and `row + new` tokens (medians)."""
    device, vocab = model.device, model.config.vocab_size
    engine = make_engine(model)
    prompt = torch.randint(3, vocab, (row + new,)).tolist()

    def median(run) -> float:
        times = []
        for _ in range(repeats):
            engine.start([prompt[:row]], new + 1)      # a live row of `row` tokens, outside the timing
            sync(device)
            t0 = time.perf_counter()
            run()
            sync(device)
            times.append(time.perf_counter() - t0)
        return sorted(times)[repeats // 2]

    append = median(lambda: engine.extend([0], [prompt[row:]]))
    short = median(lambda: engine.start([prompt[:new]], 1))
    full = median(lambda: engine.start([prompt], 1))
    return (f"append {new} tokens to a {row}-token row: {append * 1e3:.2f} ms = {append / short:.2f}x a {new}-token "
            f"prefill ({short * 1e3:.2f} ms), {append / full:.2f}x a {row + new}-token prefill ({full * 1e3:.2f} ms)")


def branched_tokens_per_s(model, prompts: torch.Tensor, new: int, max_rows: int = 0) -> tuple[float, int]:
    """(tokens/s, leaves) of BranchSampler over batch // 8 prompts: 4 roots each, forked up to 8 leaves, at
    most max_rows rows at once (0 = no cap). Random weights have high entropy, so forks happen as soon as
    min_prefix / min_gap allow; no EOS, so every tree ends at the length limit and a cap runs in waves."""
    decoder = Decoder(model.config.to_dict(), device=prompts.device, dtype=model.dtype)
    decoder.load_state_dict(model.state_dict())
    settings = BranchConfig(roots=4, max_leaves=8, entropy_threshold=0.5, min_prefix=2, min_gap=4)
    batch = [(f"p{i}", p) for i, p in enumerate(prompts[:max(1, len(prompts) // 8)].tolist())]
    BranchSampler(Engine(decoder), -1, 4, SamplingParams(), 0, max_rows).run(batch, settings, 0)  # warm-up
    sync(prompts.device)
    t0 = time.perf_counter()
    trees = BranchSampler(Engine(decoder), -1, new, SamplingParams(), 0, max_rows).run(batch, settings, 0)
    sync(prompts.device)
    tokens = sum(len(n.tokens) for t in trees for n in t.nodes)
    return tokens / (time.perf_counter() - t0), sum(len(t.leaves()) for t in trees)


def report_throughput(model, shape: str, prompts: torch.Tensor, args, modes, bw: float) -> None:
    batch = len(prompts)
    theirs = generate_tokens_per_s(model, prompts, args.new)
    floor = floor_tokens_per_s(model, batch, args.prompt, args.new, bw)
    reference = None
    for mode in modes:
        ours, prefill, warm, logits = engine_tokens_per_s(model, prompts, args.new, mode)
        reference = logits if reference is None else reference   # same tokens so far: the first mode's last logits
        print(f"{shape:14s} batch {batch:4d} {mode:7s}: engine {ours:10.0f} tok/s  generate {theirs:10.0f} tok/s  "
              f"x{ours / theirs:5.1f}  floor {floor:10.0f} tok/s ({100 * ours / floor:5.1f}% of floor)  "
              f"prefill {prefill * 1e3:.0f} ms  warm-up {warm:.1f} s  "
              f"last logits vs {modes[0]} {(logits - reference).abs().max().item():.1e}")


def report_overhead(model, shape: str, prompts: torch.Tensor, args) -> None:
    for mode in args.decode:
        o = overhead(model, prompts, args.new, mode)
        print(f"{shape:14s} batch {len(prompts):4d} {mode:7s}: step {o['step_ms']:.3f} ms  host in situ "
              f"{o['host_ms']:.3f} ms, alone {o['alone_ms']:.3f} ms, {o['ops']} ops  KV moved "
              f"{o['moved'] / 2**20:.2f} MiB / live {o['live'] / 2**20:.2f} MiB = {o['moved'] / o['live']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["tiny"], choices=sorted(SHAPES))
    ap.add_argument("--batches", nargs="+", type=int, default=[64, 256])
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens per row")
    ap.add_argument("--new", type=int, default=64, help="generated tokens per row (forced)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], help="default: bfloat16 on a GPU, float32 on a CPU")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    ap.add_argument("--decode", nargs="+", default=["eager"], choices=DECODE_MODES,
                    help="throughput and overhead: decode modes to run")
    ap.add_argument("--max-rows", nargs="+", type=int, default=[0], help="branched: row caps to run (0 = no cap)")
    ap.add_argument("--cases", nargs="+", default=["throughput", "branched", "fork"], choices=CASES)
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    if args.threads:
        torch.set_num_threads(args.threads)
    bw = bandwidth(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# {name}; {dtype}; bandwidth {bw / 1e9:.0f} GB/s; torch {torch.__version__}")
    for shape in args.shapes:
        model = build(shape, max(args.prompt + args.new, 2048), device, dtype)  # room for the fork prefix
        for batch in args.batches:
            prompts = torch.randint(3, model.config.vocab_size, (batch, args.prompt), device=device)
            if "throughput" in args.cases:
                report_throughput(model, shape, prompts, args, args.decode, bw)
            if "graph" in args.cases:
                report_throughput(model, shape, prompts, args, ["eager", "graph"], bw)
            if "overhead" in args.cases:
                report_overhead(model, shape, prompts, args)
            for max_rows in args.max_rows if "branched" in args.cases else []:
                rate, leaves = branched_tokens_per_s(model, prompts, args.new, max_rows)
                cap = f"max_rows {max_rows}" if max_rows else "no cap"
                print(f"{shape:14s} branched, {batch // 8} prompts -> {leaves} leaves, {cap}: {rate:10.0f} tok/s")
        if "fork" in args.cases:
            for prefix in (1024, 1000):  # 1000: the last page is partial, so each child copies one page
                print(f"{shape:14s} {fork_cost(model, prefix, 8, 16)}")
        if "append" in args.cases:
            print(f"{shape:14s} {append_cost(model)}")
        del model


if __name__ == "__main__":
    main()
