"""`branchrl train --from-data`: fine-tune on a stored verified data set, without sampling anything new.

    read the data set -> check it fits the config -> prepare (env, eval problems, run dir) -> launch roles
    -> sync -> eval_before -> SFT on every stored (prompt, completion + EOS) -> sync -> eval_after
    -> checkpoint, summary

Held-out pass@1 is the run's own (`loop.evaluate`: greedy, verified on the pool), so the numbers compare
with `branchrl run`'s. The objective is always SFT, with `train.epochs`, `train.lr` and `train.batch_size`
(stored rows carry no log-probs), whatever `train.algo` says. It does not warm start (point `model.path`
at a run's `checkpoints/warm_start` for that), and it only reads the data set.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from branchrl.data.datastore import find_data_dir, read_data_set
from branchrl.envs import load_env

from .config import Config, ConfigError
from .context import Context
from .loop import evaluate, launched, prepare, sync
from .models import load_tokenizer
from .progress import Progress

COLUMNS = ["env", "problem_id", "prompt", "completion"]


def train_from_data(cfg: Config, source: Path, run_dir: Path, address: str | None = None) -> dict:
    """SFT the configured policy on the data set at source (a run dir or its data/); returns the summary
    (also written to run_dir/summary.json)."""
    t0 = time.perf_counter()
    source = find_data_dir(source)
    table = read_data_set(source, COLUMNS)
    pairs = list(zip(table.column("prompt").to_pylist(), table.column("completion").to_pylist()))
    check_fits(cfg, table, pairs)
    env, tokenizer, eval_set, _ = prepare(cfg, run_dir)
    problems = len(set(zip(table.column("env").to_pylist(), table.column("problem_id").to_pylist())))
    progress = Progress(cfg.train.epochs)
    progress.note(f"data set {source}: {len(pairs)} verified samples of {problems} problems; run dir {run_dir}; "
                  f"starting Ray")
    with launched(cfg, env, tokenizer, run_dir, progress, address) as ctx:
        summary = sft_and_evaluate(ctx, eval_set, pairs)
    summary.update(rows=len(pairs), problems=problems, source=str(source), wall_seconds=time.perf_counter() - t0)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    progress.note(f"eval {summary['eval_before']:.3f} -> {summary['eval_after']:.3f}; "
                  f"summary in {run_dir / 'summary.json'}")
    return summary


def check_fits(cfg: Config, table, pairs: list[tuple[str, str]]) -> None:
    """Before the run dir exists: the data set holds the config's env, and its samples fit a tiny model."""
    name = load_env(cfg.env.name, **cfg.env.kwargs).name
    stored = sorted(set(table.column("env").to_pylist()))
    if name not in stored:
        raise ConfigError(f"the data set holds samples of env {', '.join(map(repr, stored))}, but the config "
                          f"evaluates on {name!r}; set env.name (and env.kwargs) to the env that generated it")
    if cfg.model.path is None:
        tokenizer, limit = load_tokenizer(cfg.model), cfg.model.tiny.max_position
        longest = max(len(tokenizer.encode(p)) + len(tokenizer.encode(c)) + 1 for p, c in pairs)  # as Trainer.sft packs
        if longest > limit:
            raise ConfigError(f"a stored sample is {longest} tokens, over model.tiny.max_position={limit}")


def sft_and_evaluate(ctx: Context, eval_set, pairs: list[tuple[str, str]]) -> dict:
    """eval -> SFT -> eval -> save: every trainer call of this command is here."""
    cfg, trainer, t = ctx.cfg, ctx.roles.trainer, ctx.cfg.train
    sync(ctx.roles)
    eval_before = evaluate(ctx, eval_set, step=0)
    ctx.progress.note(f"eval_before {eval_before:.3f} on {len(eval_set)} held-out problems")
    ctx.progress.note(f"SFT on {len(pairs)} stored samples x {t.epochs} epochs (lr {t.lr}, batch {t.batch_size})")
    stats = trainer.sft(pairs, t.epochs, t.lr, t.batch_size)
    ctx.ledger.add_train(stats)
    ctx.progress.note(f"SFT done in {stats.seconds:.1f}s (loss {stats.loss:.3f})")
    sync(ctx.roles)
    eval_after = evaluate(ctx, eval_set, step=1)
    trainer.save(str(ctx.run_dir / "checkpoints" / "final"))
    led = ctx.ledger
    return {"eval_before": eval_before, "eval_after": eval_after, "eval_problems": len(eval_set),
            "epochs": t.epochs, "loss": stats.loss, "seed": cfg.run.seed, "trained_tokens": led.trained_tokens,
            "train_flops": led.train_flops, "train_seconds": led.train_seconds, "eval_flops": led.eval_flops}
