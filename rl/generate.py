"""`branchrl generate`: a verified data set from a fixed policy, with rollout workers and verifiers only.

    prepare (env, the problems to walk, out dir) -> launch (no training group) -> load the policy once
    -> batches of open problems: sample -> verify -> keep new distinct passing samples -> journal -> shard
    -> summary

The policy is model.path (a run's `checkpoints/final`, any HF checkpoint) or the tiny model, version 0 from start
to end. The walk visits the generate.problems problems of generate.split once, in the order the env draws them
for run.seed: a problem gets one tree per batch until it holds generate.per_problem verified samples, distinct by
the env's signature across all its trees, or has spent generate.max_leaves_per_problem leaves; then it is done
and never sampled again. Batch k is step k of the same data set `run` writes (shards, manifest, columns and
sample ids: DataStore and loop.provenance); run.steps bounds the batches.

Resume: before a batch's shard is written, one fsynced line goes to OUT/generate_journal.jsonl (step, attempt,
rows, each problem's new leaves and whether it is now done, the ledger so far). A line counts only once its shard
is in the data store, or when it stored no rows: a kill between line and shard leaves a line that resume skips,
so those problems are sampled again and nothing counts as done that was not stored. The signatures a problem
already stored are read back from the data set. Not here: training, eval, weight updates, RL metrics.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Callable

from branchrl.data.datastore import DataSetError, DataStore, read_data_set, write_atomically
from branchrl.data.ledger import Ledger
from branchrl.data.prune import Selection, select_verified
from branchrl.envs import EnvError, Environment, Problem
from branchrl.records import Leaf

from . import dispatch, preflight
from .config import Config, ConfigError, GenerateConfig, check_generate_resume, dump_config, load_config
from .context import Context
from .loop import launched, provenance, sync, verify_leaves
from .models import describe_unloaded, load_tokenizer
from .progress import Progress, duration, tool_note
from .prompts import templated
from .tree import Tree

JOURNAL = "generate_journal.jsonl"
# summary keys of the ledger that only a training group fills: these, and every key starting with "train"
TRAINING_KEYS = ("processed_tokens", "rollout_train_flop_ratio", "eval_flops")


@dataclass
class Walk:
    """Where the walk over the problems stands; problem ids are unique in it."""
    problems: list[Problem]
    leaves: dict[str, int]            # leaves sampled so far, per problem id
    seen: dict[str, set[str]]         # signatures of the samples stored, per problem id
    done: dict[str, int] = field(default_factory=dict)   # problem id -> the step that finished it
    busy: set[str] = field(default_factory=set)          # problems in a batch on the rollout workers
    cursor: int = 0                                      # every problem before it is done

    @classmethod
    def start(cls, problems: list[Problem]) -> "Walk":
        return cls(problems, {p.id: 0 for p in problems}, {p.id: set() for p in problems})

    def next_batch(self, n: int) -> list[Problem]:
        """The first n problems, in walk order, that are neither done nor in a batch already."""
        while self.cursor < len(self.problems) and self.problems[self.cursor].id in self.done:
            self.cursor += 1   # a long walk is not scanned from its start for every batch
        open_ = (p for p in islice(self.problems, self.cursor, None) if p.id not in self.done and p.id not in self.busy)
        batch = list(islice(open_, n))
        self.busy.update(p.id for p in batch)
        return batch

    def take(self, g: GenerateConfig, problems: list[Problem], trees: list[Tree], passing: list[tuple[Problem, Leaf]],
             signature: Callable[[str], str], step: int) -> tuple[list[tuple[Problem, Leaf]], dict[str, list]]:
        """A batch's new samples (passing leaves whose signature their problem has not stored, up to per_problem)
        and, per problem, [leaves sampled, done now]."""
        new = []
        for problem, leaf in passing:
            seen, sig = self.seen[problem.id], signature(leaf.text)
            if sig not in seen and len(seen) < g.per_problem:
                seen.add(sig)
                new.append((problem, leaf))
        delta = {}
        for problem, tree in zip(problems, trees, strict=True):
            spent = len(tree.leaves())
            self.leaves[problem.id] += spent
            done = len(self.seen[problem.id]) >= g.per_problem or self.leaves[problem.id] >= g.max_leaves_per_problem
            if done:
                self.done[problem.id] = step
            self.busy.discard(problem.id)
            delta[problem.id] = [spent, done]
        return new, delta

    def replay(self, line: dict) -> None:
        """Apply a journal line that counts (its shard is stored)."""
        for pid, (spent, done) in line["problems"].items():
            if pid not in self.leaves:
                raise ConfigError(f"the journal names problem {pid!r}, which the env no longer draws for this config; "
                                  f"the env or its data changed since the walk started: generate into a new --out")
            self.leaves[pid] += spent
            if done:
                self.done[pid] = line["step"]


def generate(cfg: Config, out: Path, address: str | None = None) -> dict:
    """Walk the problems into out/ from the start; returns the summary (also out/summary.json)."""
    env, tokenizer, problems = prepare(cfg, out)
    return drive(cfg, out, address, env, tokenizer, Walk.start(problems), [])


def resume(out: Path, address: str | None = None, overrides: list[str] = ()) -> dict:
    """Continue a stopped or killed walk in out/ with its own config.yaml (overrides: GENERATE_RESUME_KEYS only);
    no problem done before is sampled again and every stored sample stays."""
    check_generate_resume(list(overrides))
    if not (out / "config.yaml").is_file():
        raise ConfigError(f"{out} holds no config.yaml; pass the --out dir of a `branchrl generate`")
    cfg = load_config(out / "config.yaml", overrides)
    if overrides:
        dump_config(cfg, out / "config.yaml")
    tokenizer = load_tokenizer(cfg.model)
    env = templated(preflight.inputs(cfg, None), tokenizer, cfg.model)
    walk = Walk.start(problems_to_walk(cfg, env))
    return drive(cfg, out, address or cfg.run.ray_address, env, tokenizer, walk, read_journal(out / JOURNAL))


def problems_to_walk(cfg: Config, env: Environment) -> list[Problem]:
    """generate.problems problems of generate.split (0: all of it), the same list every time for one config."""
    g, seed = cfg.generate, cfg.run.seed
    n = g.problems or env.split_size(g.split)
    if n is None:
        raise ConfigError(f"env {env.name!r} does not say how many {g.split} problems it holds (it draws them without "
                          f"end); set generate.problems to how many to walk")
    draw = {"train": lambda: env.train_problems(n, seed), "warm_start": lambda: env.warm_start_problems(n, seed),
            "eval": lambda: env.eval_problems(n)}[g.split]
    problems = draw()
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        raise EnvError(f"env {env.name!r} drew the {g.split} problem {_first_repeat(ids)!r} twice; a walk visits "
                       f"each problem once, so problem ids must be unique")
    return problems


def _first_repeat(ids: list[str]) -> str:
    seen: set[str] = set()
    return next(i for i in ids if i in seen or seen.add(i))


def prepare(cfg: Config, out: Path) -> tuple[Environment, object, list[Problem]]:
    """Everything that can fail on bad input, before Ray starts (preflight.py): env, model, cluster, problems,
    lengths, out dir. Prompts go through the model's chat template (prompts.py), as in `run`."""
    env = preflight.inputs(cfg, None)
    tokenizer = load_tokenizer(cfg.model)
    env = templated(env, tokenizer, cfg.model)
    problems = problems_to_walk(cfg, env)
    preflight.lengths(cfg, tokenizer, [p.prompt for p in problems], [])
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"output dir {out} is not empty; pass another --out, or --resume {out} to continue it")
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    return env, tokenizer, problems


def read_journal(path: Path) -> list[dict]:
    """The journal's complete lines. A last line a kill cut short (no newline yet) is dropped from the file too,
    so the next line appended starts clean."""
    if not path.exists():
        return []
    *complete, torn = path.read_text().split("\n")
    lines = []
    for number, text in enumerate(complete, 1):
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            raise DataSetError(f"{path}:{number} is not a journal line; the walk's record of done problems is "
                               f"damaged: restore it or generate into a new --out") from None
    if torn:
        write_atomically(path, "".join(line + "\n" for line in complete).encode())
    return lines


def _append(journal, record: dict) -> None:
    journal.write(json.dumps(record) + "\n")
    journal.flush()
    os.fsync(journal.fileno())  # on disk before the shard it describes


def drive(cfg: Config, out: Path, address: str | None, env: Environment, tokenizer, walk: Walk,
          lines: list[dict]) -> dict:
    t0 = time.perf_counter()
    store, counted = restore(out, env, walk, lines)
    attempt = store.attempt
    progress = Progress(cfg.run.steps)
    progress.note(f"generating into {out}: {len(walk.problems)} {cfg.generate.split} problems, {len(walk.done)} done"
                  + (f"; resuming as attempt {attempt}" if attempt else ""))
    policy = describe_unloaded(cfg.model, cfg.run.seed)
    with launched(cfg, env, tokenizer, out, progress, address, policy=policy) as ctx:
        ctx.attempt = attempt
        if counted:
            ctx.ledger = Ledger(**counted[-1]["ledger"])
        _, seconds = sync(ctx.roles, dispatch.publish_fixed(ctx.roles))
        ctx.ledger.sync_seconds += seconds
        ctx.ledger.sync_bytes += ctx.roles.published.bytes
        next_key = 1 + max((line["step"] for line in lines), default=0)
        summary = summarize(ctx, walk, store, walk_batches(ctx, walk, store, next_key))
        summary["placement"] = ctx.roles.placement()
    summary["wall_seconds"] = time.perf_counter() - t0
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    progress.note(f"{summary['problems_done']}/{summary['problems']} problems done, {summary['verified_samples']} "
                  f"verified samples{tool_note(summary) if env.max_turns else ''}; summary in {out / 'summary.json'}")
    return summary


def restore(out: Path, env: Environment, walk: Walk, lines: list[dict]) -> tuple[DataStore, list[dict]]:
    """The data store opened for the next attempt (0 when there are no lines), and the journal lines that count,
    applied to `walk` together with the signatures of every stored sample."""
    attempt = 1 + max((line["attempt"] for line in lines), default=-1)
    store = DataStore(out / "data", attempt=attempt)   # adopts a shard a kill left out of the manifest
    stored = {(entry["step"], entry["attempt"]) for entry in store.shards}
    counted = [line for line in lines if not line["rows"] or (line["step"], line["attempt"]) in stored]
    for line in counted:
        walk.replay(line)
    if store.rows:
        rows = read_data_set(out / "data", ["problem_id", "completion"]).to_pydict()
        for pid, completion in zip(rows["problem_id"], rows["completion"], strict=True):
            if pid not in walk.seen:
                raise DataSetError(f"{out / 'data'} holds samples of problem {pid!r}, which this walk does not visit; "
                                   f"generate into a new --out")
            walk.seen[pid].add(env.signature(completion))
    return store, counted


def walk_batches(ctx: Context, walk: Walk, store: DataStore, next_key: int) -> dict:
    """Keep generate.batches_in_flight batches of open problems on the rollout workers and store each as it comes
    back, until every problem is done or run.steps batches are numbered. Returns the last step and how idle the
    rollout workers were."""
    cfg, queue, key = ctx.cfg, deque(), next_key
    busy, t0, done_before, steps = [0.0] * len(ctx.roles.rollout), time.perf_counter(), len(walk.done), 0
    with open(ctx.run_dir / JOURNAL, "a") as journal:
        while True:
            while len(queue) < cfg.generate.batches_in_flight and key <= cfg.run.steps and (
                    problems := walk.next_batch(cfg.rollout.prompts_per_step)):
                prompts = [(p.id, ctx.tokenizer.encode(p.prompt)) for p in problems]
                queue.append(dispatch.submit(ctx.roles, problems, prompts, key))
                key += 1
            if not queue:
                break
            record = walk_step(ctx, walk, store, journal, queue.popleft(), busy)
            steps += 1
            ctx.progress.note(progress_line(record, walk, store, time.perf_counter() - t0,
                                            len(walk.done) - done_before, steps, cfg.run.steps - record["step"])
                              + (tool_note(record) if ctx.env.max_turns else ""))
    wall = time.perf_counter() - t0
    return {"steps": key - 1, "rollout_idle_fraction": 1 - sum(busy) / (len(busy) * wall) if wall else 0.0}


def walk_step(ctx: Context, walk: Walk, store: DataStore, journal, batch: dispatch.Batch, busy: list[float]) -> dict:
    """One batch back from the rollout workers: verify, keep the new distinct samples, journal, store."""
    trees, worker_busy = dispatch.collect(ctx.roles, batch)
    busy[:] = [a + b for a, b in zip(busy, worker_busy)]
    for i, tree in enumerate(trees):  # as feed.py names them: run-unique, and the key is the step
        tree.tree_id = f"{tree.problem_id}#b{batch.key}#{i}"
    leaves, verify_s = verify_leaves(ctx, batch.problems, trees)
    chosen = select_verified(batch.problems, trees, leaves, ctx.cfg.branch.max_leaves, ctx.env.signature)
    new, delta = walk.take(ctx.cfg.generate, batch.problems, trees, chosen.samples, ctx.env.signature, batch.key)
    rows = provenance(ctx, Selection(samples=new), batch.key, ctx.attempt)
    rollout_s, generated = max(worker_busy), sum(t.generated_tokens() for t in trees)
    tools = ctx.ledger.add_sampled(trees, rollout_s, leaves, chosen.verified_tokens, verify_s)   # as run's steps
    record = {"step": batch.key, "prompts": len(trees), "leaves": len(leaves), "forks": sum(t.forks() for t in trees),
              "pass_rate": chosen.pass_rate, "verified_samples": len(rows), "generated_tokens": generated,
              "tokens_per_s": generated / rollout_s if rollout_s else 0.0, "rollout_seconds": rollout_s,
              "verify_seconds": verify_s, **tools}
    _append(journal, {"step": batch.key, "attempt": ctx.attempt, "rows": len(rows), "problems": delta,
                      "ledger": ctx.ledger.state(), "record": record})
    shard = store.write(batch.key, rows)
    # after the journal line: a resumed walk's ledger lacks the bytes of the last shard before the stop
    ctx.ledger.verified_bytes += shard.stat().st_size if shard else 0
    return record


def progress_line(r: dict, walk: Walk, store: DataStore, elapsed: float, finished: int, steps: int,
                  steps_left: int) -> str:
    """One line per batch; the ETA extrapolates this attempt's rate: problems finished per second, or batches per
    second where run.steps ends the walk first."""
    left = len(walk.problems) - len(walk.done)
    etas = [elapsed / finished * left] if finished else []
    etas.append(elapsed / steps * steps_left)
    solved = sum(1 for pid in walk.done if walk.seen[pid])
    return (f"step {r['step']}  problems {len(walk.done)}/{len(walk.problems)} done ({solved} solved)  "
            f"samples {store.rows}  pass {r['pass_rate']:.3f}  leaves {r['leaves']} ({r['forks']} forks)  "
            f"{r['tokens_per_s'] / 1000:.1f}k tok/s  ETA {duration(min(etas) if left else 0.0)}")


def summarize(ctx: Context, walk: Walk, store: DataStore, walked: dict) -> dict:
    """`run`'s summary without the training keys, plus how the walk went."""
    g = ctx.cfg.generate
    totals = {k: v for k, v in ctx.ledger.totals().items() if k not in TRAINING_KEYS and not k.startswith("train")}
    faults = {k: v for k, v in asdict(ctx.roles.faults).items() if k not in ("pids", "trainer_restarts")}
    return {"split": g.split, "problems": len(walk.problems), "problems_done": len(walk.done),
            "problems_solved": sum(1 for pid in walk.done if walk.seen[pid]),
            "problems_full": sum(1 for pid in walk.done if len(walk.seen[pid]) >= g.per_problem),
            "complete": len(walk.done) == len(walk.problems), "leaves": sum(walk.leaves.values()),
            "verified_samples": store.rows, "per_problem": g.per_problem, "seed": ctx.cfg.run.seed,
            "policy": ctx.cfg.model.path or "tiny", "attempt": ctx.attempt, **walked, **totals, **faults}
