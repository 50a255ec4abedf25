"""`branchrl train --from-data`: fine-tune on a stored verified data set, without sampling anything new.

    read the data set -> check it fits the config -> prepare (env, eval problems, run dir) -> launch roles
    -> sync -> eval_before -> SFT on every stored (prompt, completion + EOS), epoch by epoch -> sync -> eval_after
    -> checkpoint, summary

SIGTERM / SIGINT stop the SFT at the end of an epoch: summary.json with `interrupted: true`, no eval_after and
nothing saved (this command does not resume), exit 143 / 130.

A multi-turn row (its `roles` column holds a tool span) is trained as a transcript: the tool's output is
context, never a target, as the RL path's `prune.training_sequence` masks it; a row whose `roles` do not tile
its completion is refused by name before anything starts. Rows without `roles` (older shards) or with only
policy spans train on their whole text.

Held-out pass@1 is the run's own (`loop.evaluate`: greedy, verified on the pool), so the numbers compare
with `branchrl run`'s. The objective is always SFT, with `train.epochs`, `train.lr` and `train.batch_size`
(stored rows carry no log-probs), whatever `train.algo` says. It does not warm start (point `model.path`
at a run's `checkpoints/warm_start` for that), and it only reads the data set.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from branchrl.data.datastore import DataSetError, find_data_dir, read_data_set
from branchrl.envs import load_env
from branchrl.training.trainer import encode_pair

from . import interrupt
from .config import Config, ConfigError
from .context import Context
from .loop import evaluate, launched, prepare, sft_epochs, sync
from .models import load_tokenizer
from .progress import Progress

COLUMNS = ["sample_id", "env", "problem_id", "prompt", "completion"]
OPTIONAL = ("roles",)           # multi-turn transcripts; shards written before the column lack it
ROLES = ("policy", "tool")


def train_from_data(cfg: Config, source: Path, run_dir: Path, address: str | None = None) -> dict:
    """SFT the configured policy on the data set at source (a run dir or its data/); returns the summary
    (also written to run_dir/summary.json)."""
    t0 = time.perf_counter()
    source = find_data_dir(source)
    table = read_data_set(source, COLUMNS, OPTIONAL)
    pairs = sft_pairs(table)
    check_fits(cfg, table, pairs)
    env, tokenizer, eval_set, _ = prepare(cfg, run_dir)
    problems = len(set(zip(table.column("env").to_pylist(), table.column("problem_id").to_pylist())))
    progress = Progress(cfg.train.epochs)
    tool_rows = sum(not isinstance(c, str) for _, c in pairs)
    progress.note(f"data set {source}: {len(pairs)} verified samples of {problems} problems"
                  + (f" ({tool_rows} with tool turns: tool outputs are context, not targets)" if tool_rows else "")
                  + f"; run dir {run_dir}; starting Ray")
    with launched(cfg, env, tokenizer, run_dir, progress, address) as ctx:
        interrupt.install()  # once Ray is up: ray.init sets a SIGTERM handler of its own
        try:
            summary = sft_and_evaluate(ctx, eval_set, pairs)
        finally:
            interrupt.restore()
    summary.update(rows=len(pairs), tool_rows=tool_rows, problems=problems, source=str(source),
                   wall_seconds=time.perf_counter() - t0)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if summary["interrupted"]:
        progress.note(f"{summary['signal']}: SFT interrupted after epoch {summary['epochs_done']}/{summary['epochs']}; "
                      f"nothing was saved (train --from-data does not resume): run it again with --out NEW_DIR; "
                      f"summary in {run_dir / 'summary.json'}")
    else:
        progress.note(f"eval {summary['eval_before']:.3f} -> {summary['eval_after']:.3f}; "
                      f"summary in {run_dir / 'summary.json'}")
    return summary


def sft_pairs(table) -> list[tuple]:
    """(prompt, completion) per row, for the SFT (`Trainer.sft_start`): the completion's text, or for a row with a
    tool span its [(role, text), ...] transcript (tool turns are context, not targets)."""
    rows = table.select(["sample_id", "prompt", "completion", "roles"]).to_pylist()
    return [(r["prompt"], transcript(r["sample_id"], r["completion"], r["roles"])) for r in rows]


def transcript(name: str, completion: str, spans: list[dict] | None):
    """A row's completion as [(role, text), ...] when its spans (in order, tiling the text) hold a tool turn; the
    text itself without spans or tool turns. Malformed spans: a one-line DataSetError naming the row."""
    if not spans:
        return completion
    parts, at = [], 0
    for i, span in enumerate(spans):
        problem = span_problem(span, at, len(completion))
        if problem:
            raise DataSetError(f"data-set row {name!r}: roles[{i}] {problem}; fix or remove the row (roles must be "
                               f"policy/tool spans that tile the completion in order)")
        parts.append((span["role"], completion[span["start"]:span["end"]]))
        at = span["end"]
    if at != len(completion):
        raise DataSetError(f"data-set row {name!r}: its roles end at character {at} of a {len(completion)}-character "
                           f"completion; fix or remove the row (roles must tile the completion in order)")
    return parts if any(role == "tool" for role, _ in parts) else completion


def span_problem(span: dict, at: int, length: int) -> str | None:
    """What is wrong with a role span that should start at character `at` of a `length`-character completion."""
    if span is None:
        return "is null"
    role, start, end = span["role"], span["start"], span["end"]
    if role not in ROLES:
        return f"has unknown role {role!r} (policy or tool)"
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= length):
        return f"[{start}, {end}) is out of range of the {length}-character completion"
    if start < at:
        return f"[{start}, {end}) overlaps the span before it, which ends at {at}"
    if start > at:
        return f"[{start}, {end}) leaves characters {at}..{start} without a role"
    return None


def check_fits(cfg: Config, table, pairs: list[tuple]) -> None:
    """Before the run dir exists: the data set holds the config's env, and its samples fit a tiny model."""
    name = load_env(cfg.env.name, **cfg.env.kwargs).name
    stored = sorted(set(table.column("env").to_pylist()))
    if name not in stored:
        raise ConfigError(f"the data set holds samples of env {', '.join(map(repr, stored))}, but the config "
                          f"evaluates on {name!r}; set env.name (and env.kwargs) to the env that generated it")
    if cfg.model.path is None:
        tokenizer, limit = load_tokenizer(cfg.model), cfg.model.tiny.max_position
        longest = max(len(p) + len(c) for p, c, *_ in (encode_pair(tokenizer, *pair) for pair in pairs))
        if longest > limit:
            raise ConfigError(f"a stored sample is {longest} tokens, over model.tiny.max_position={limit}")


def sft_and_evaluate(ctx: Context, eval_set, pairs: list[tuple]) -> dict:
    """eval -> SFT -> eval -> save: every trainer call of this command is here. A stop signal ends the SFT at an
    epoch's end, and the command there: no eval_after, nothing saved."""
    cfg, t = ctx.cfg, ctx.cfg.train
    sync(ctx.roles)
    eval_before = evaluate(ctx, eval_set, step=0)
    ctx.progress.note(f"eval_before {eval_before:.3f} on {len(eval_set)} held-out problems")
    ctx.progress.note(f"SFT on {len(pairs)} stored samples x {t.epochs} epochs (lr {t.lr}, batch {t.batch_size})")
    stats, done = sft_epochs(ctx, pairs, t.epochs, t.lr, t.batch_size, "SFT")
    ctx.ledger.add_train(stats)
    led = ctx.ledger
    summary = {"interrupted": done < t.epochs, "eval_before": eval_before, "eval_after": None,
               "eval_problems": len(eval_set), "epochs": t.epochs, "epochs_done": done, "loss": stats.loss,
               "seed": cfg.run.seed, "trained_tokens": led.trained_tokens, "train_flops": led.train_flops,
               "train_seconds": led.train_seconds}
    if summary["interrupted"]:
        return {**summary, "signal": interrupt.requested(), "eval_flops": led.eval_flops}
    ctx.progress.note(f"SFT done in {stats.seconds:.1f}s (loss {stats.loss:.3f})")
    sync(ctx.roles)
    summary["eval_after"] = evaluate(ctx, eval_set, step=1)
    ctx.roles.trainer.save(str(ctx.run_dir / "checkpoints" / "final"))
    return {**summary, "eval_flops": led.eval_flops}
