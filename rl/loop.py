"""The driver: one run from config to summary, phase by phase.

    prepare (env, problems, run dir) -> launch roles on Ray -> warm start (epoch by epoch) -> sync v0 -> eval_before
    -> steps: sample -> verify [-> more batches] -> prune -> store -> advantages -> update -> sync
       [-> step checkpoint]
    -> eval_after -> checkpoint, summary

With rollout.max_staleness >= 1 a step's update trains while the next step's batches are sampled
(feed.py); `resume` continues a killed run from its last step checkpoint (checkpoints.py), and `recover` does
the same within the run when a trainer dies; work on the actor pools, and what happens when a rollout worker
or verifier dies, is in dispatch.py. The driver owns the tokenizer (text <-> ids), the ledger and the files
of the run directory; the roles own the compute. It never runs a model itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from branchrl.data.datastore import DataStore, sample_id
from branchrl.data.ledger import STEP_ROLLOUT, STEP_TRAIN, Ledger
from branchrl.data.prune import Selection, select_verified
from branchrl.envs import Environment, Problem
from branchrl.sync.weight_sync import Published
from branchrl.training.algos import ALGOS
from branchrl.training.group import TrainerDied
from branchrl.training.trainer import TrainStats
from branchrl.verifiers import verifier_version

from . import checkpoints, dispatch, interrupt, preflight
from .config import Config, dump_config, load_config
from .context import Context
from .feed import Feed, epoch_size
from .launch import Roles, launch, start_ray
from .models import load_tokenizer
from .progress import Progress
from .prompts import templated
from .records import Leaf, PolicyInfo
from .tracking import Tracker, rollout_stats, write_samples
from .tree import Tree


@dataclass
class Rollouts:
    """One step's sampled and verified batches, concatenated."""
    problems: list[Problem] = field(default_factory=list)
    trees: list[Tree] = field(default_factory=list)
    leaves: list[Leaf] = field(default_factory=list)
    rollout_seconds: float = 0.0
    verify_seconds: float = 0.0
    batches: int = 0
    staleness: int = 0         # most policy versions a kept batch lags behind the update it feeds
    stale_batches: int = 0     # batches dropped for lagging more than rollout.max_staleness
    stale_tokens: int = 0

    def generated_tokens(self) -> int:
        return sum(t.generated_tokens() for t in self.trees)


def run(cfg: Config, run_dir: Path, address: str | None = None) -> dict:
    """Run the whole pipeline; returns the summary (also written to run_dir/summary.json)."""
    env, tokenizer, eval_set, warm_set = prepare(cfg, run_dir)
    return drive(cfg, run_dir, address, env, tokenizer, eval_set, warm_set)


def resume(run_dir: Path, address: str | None = None, overrides: list[str] = (), verbose: bool = False) -> dict:
    """Continue a killed run from its last step checkpoint (checkpoints.py says what carries over); overrides may
    reshape the training group (checkpoints.RESHAPE_KEYS), and config.yaml keeps the new shape."""
    cfg, point, env = preflight.resumable(run_dir, overrides, address, verbose)
    if overrides:
        dump_config(load_config(run_dir / "config.yaml", overrides), run_dir / "config.yaml")
    cfg.warm_start.problems = 0
    tokenizer = load_tokenizer(cfg.model)
    env = templated(env, tokenizer, cfg.model)
    checkpoints.begin_attempt(run_dir, point, overrides=overrides)
    return drive(cfg, run_dir, address or cfg.run.ray_address, env, tokenizer, env.eval_problems(cfg.eval.problems),
                 [], point)


def drive(cfg: Config, run_dir: Path, address: str | None, env: Environment, tokenizer, eval_set: list[Problem],
          warm_set: list[Problem], point: checkpoints.ResumePoint | None = None) -> dict:
    t0 = time.perf_counter()
    progress = Progress(cfg.run.steps)
    progress.note(f"run dir {run_dir}; starting Ray" + (f"; resuming after step {point.step}" if point else ""))
    with launched(cfg, env, tokenizer, run_dir, progress, address, point) as ctx:
        interrupt.install()  # once Ray is up: ray.init sets a SIGTERM handler of its own
        try:
            summary = train_and_evaluate(ctx, eval_set, warm_set, point)
        except interrupt.Interrupted as stop:
            summary = stopped(ctx, stop, point)
        finally:
            interrupt.restore()
        summary["placement"] = ctx.roles.placement()
    summary["wall_seconds"] = time.perf_counter() - t0
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if summary["interrupted"]:
        progress.note(stop_note(summary, run_dir))
    else:
        progress.note(f"eval {summary['eval_before']:.3f} -> {summary['eval_after']:.3f}; "
                      f"summary in {run_dir / 'summary.json'}")
    return summary


def stopped(ctx: Context, stop: interrupt.Interrupted, point: checkpoints.ResumePoint | None) -> dict:
    """The summary of a run stopped by a signal at a clean point (its step checkpoint written, or in the warm
    start, before any): what it did so far, `interrupted: true`, no eval_after."""
    warm = {"warm_start_epochs_done": stop.warm_start[0], "warm_start_epochs": stop.warm_start[1]} \
        if stop.warm_start else {}
    return {"interrupted": True, "signal": stop.signal_name, "eval_before": stop.eval_before, "eval_after": None,
            "steps": stop.step, "steps_planned": ctx.cfg.run.steps, **warm, "seed": ctx.cfg.run.seed,
            "resumed_from_step": point.step if point else None, "attempt": ctx.attempt, **ctx.ledger.totals(),
            **{k: v for k, v in asdict(ctx.roles.faults).items() if k != "pids"}}


def stop_note(summary: dict, run_dir: Path) -> str:
    """The last console line of a run a signal stopped: where it stopped and what to do next."""
    if "warm_start_epochs_done" in summary:
        return (f"{summary['signal']}: warm start interrupted after epoch {summary['warm_start_epochs_done']}/"
                f"{summary['warm_start_epochs']}; nothing was saved and there is no RL checkpoint yet to resume from: "
                f"start the run again (branchrl run {run_dir / 'config.yaml'} --out NEW_DIR)")
    return (f"{summary['signal']}: stopped after step {summary['steps']} with a step checkpoint; "
            f"continue with `branchrl run --resume {run_dir}`")


@contextmanager
def launched(cfg: Config, env: Environment, tokenizer, run_dir: Path, progress: Progress, address: str | None,
             point: checkpoints.ResumePoint | None = None, policy: PolicyInfo | None = None) -> Iterator[Context]:
    """Ray started or joined, the roles launched, the driver's Context (its ledger continued from the resume
    point, if any); the roles go down on the way out. policy: a fixed policy's `models.describe` (generate.py):
    no training group."""
    start_ray(cfg, address)
    roles = launch(cfg, answer_start_ids(cfg, env, tokenizer), policy)
    try:
        info = roles.policy
        ledger = Ledger(**point.ledger) if point else Ledger(info.flop_params, info.layers, info.hidden,
                                                               info.head_params)
        yield Context(cfg, env, tokenizer, roles, ledger, run_dir, progress, attempt=point.attempt if point else 0)
    finally:
        roles.shutdown()


def prepare(cfg: Config, run_dir: Path):
    """Everything that can fail on bad input, done before Ray starts (preflight.py), then the run dir."""
    env = preflight.inputs(cfg, run_dir)
    tokenizer = load_tokenizer(cfg.model)
    env = templated(env, tokenizer, cfg.model)   # prompts as the policy sees them (chat template)
    eval_set = env.eval_problems(cfg.eval.problems)
    warm_set = env.warm_start_problems(cfg.warm_start.problems, cfg.run.seed) if cfg.warm_start.problems else []
    if cfg.rollout.problem_order == "epochs":
        epoch_size(cfg, env)
    preflight.lengths(cfg, tokenizer, [p.prompt for p in eval_set + env.train_problems(8, 0)],
                      [p.prompt + p.solution for p in warm_set])
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, run_dir / "config.yaml")
    return env, tokenizer, eval_set, warm_set


def answer_start_ids(cfg: Config, env: Environment, tokenizer) -> frozenset[int]:
    """The token ids that start the env's answer marker (alone and after a space, as BPE vocabularies spell
    it both ways): no fork at or after them, unless branch.fork_in_answer. A first token that is only
    whitespace (a character-level vocabulary spells " ####" as " ", "#", ...) is not the marker's: it
    would end forking at the first space. Token-level on purpose: the rollout workers hold no tokenizer."""
    marker = env.answer_marker
    if not marker or cfg.branch.fork_in_answer:
        return frozenset()
    firsts = {tokenizer.encode(m, add_special_tokens=False)[0] for m in (marker, " " + marker)}
    return frozenset(i for i in firsts if tokenizer.decode([i]).strip())


def train_and_evaluate(ctx: Context, eval_set: list[Problem], warm_set: list[Problem],
                       point: checkpoints.ResumePoint | None = None) -> dict:
    trainer, cfg = ctx.roles.trainer, ctx.cfg
    if warm_set:
        warm_start(ctx, warm_set)
    if point:
        trainer.resume(str(point.checkpoint))
    sync(ctx.roles)
    if point:
        eval_before = point.eval_before
    else:
        eval_before = evaluate(ctx, eval_set, step=0)
        ctx.progress.note(f"eval_before {eval_before:.3f} on {len(eval_set)} held-out problems")
        # a point to resume or recover from before the first step checkpoint
        if cfg.run.checkpoint_every or interrupt.requested():
            checkpoints.save(ctx, 0, 1, eval_before)
        interrupt.check(0, eval_before)
    while True:
        store = DataStore(ctx.run_dir / "data", attempt=ctx.attempt)
        try:
            rl = train_steps(ctx, store, eval_set, eval_before, point)
            break
        except TrainerDied as e:
            point = recover(ctx, e)
    eval_after = evaluate(ctx, eval_set, cfg.run.steps)
    trainer.save(str(ctx.run_dir / "checkpoints" / "final"))
    return {"interrupted": False, "eval_before": eval_before, "eval_after": eval_after, "eval_problems": len(eval_set),
            "steps": cfg.run.steps, "verified_samples": store.rows, "seed": cfg.run.seed,
            "resumed_from_step": point.step if point else None, "attempt": ctx.attempt,
            **ctx.ledger.totals(), **rl, **{k: v for k, v in asdict(ctx.roles.faults).items() if k != "pids"}}


def warm_start(ctx: Context, warm_set: list[Problem]) -> None:
    """SFT on the worked problems (warm_start.*), then its checkpoint. A stop signal ends it at an epoch's end:
    Interrupted, with nothing saved (a part of the schedule is no warm start to build on)."""
    ws = ctx.cfg.warm_start
    ctx.progress.note(f"warm start: SFT on {len(warm_set)} worked problems x {ws.epochs} epochs")
    pairs = [(p.prompt, ctx.env.worked(p)) for p in warm_set]
    stats, done = sft_epochs(ctx, pairs, ws.epochs, ws.lr, ws.batch_size, "warm start")
    if done < ws.epochs:
        raise interrupt.Interrupted(interrupt.requested(), 0, None, warm_start=(done, ws.epochs))
    ctx.progress.note(f"warm start done in {stats.seconds:.1f}s (loss {stats.loss:.3f})")
    ctx.roles.trainer.save(str(ctx.run_dir / "checkpoints" / "warm_start"))


def sft_epochs(ctx: Context, pairs: list[tuple], epochs: int, lr: float, batch_size: int,
               phase: str) -> tuple[TrainStats, int]:
    """An SFT on the trainer group, epoch by epoch (Trainer.sft_start / sft_epoch / sft_finish: the schedule and
    shuffling of one uninterrupted pass): a progress line after each epoch, and after a stop signal no further
    epoch. Returns the totals over the epochs done and how many were done (fewer than `epochs` when stopped)."""
    trainer, t0, done = ctx.roles.trainer, time.perf_counter(), 0
    trainer.sft_start(pairs, epochs, lr, batch_size)
    while done < epochs and not interrupt.requested():
        stats = trainer.sft_epoch()
        done += 1
        rate = stats.processed_tokens / stats.seconds if stats.seconds else 0.0
        ctx.progress.epoch(phase, done, epochs, stats.loss, rate, time.perf_counter() - t0)
    return trainer.sft_finish(), done


def recover(ctx: Context, died: TrainerDied) -> checkpoints.ResumePoint:
    """A trainer died (the group has killed every rank and Ray restarts them): rendezvous the restarted group,
    reload the last step checkpoint and go back to it as the next attempt, as `resume` does after a killed
    driver: its ledger, its batch numbering, the steps after it sampled and trained again."""
    if not ctx.cfg.run.checkpoint_every:
        raise RuntimeError(f"{died}; run.checkpoint_every is 0, so there is no step checkpoint to continue from "
                           f"(set it to recover from a dead trainer)") from died
    ctx.progress.note(f"{died}; reloading the last step checkpoint")
    ctx.roles.trainer.restart()
    ctx.roles.faults.trainer_restarts += 1
    point = checkpoints.resume_point(ctx.run_dir)
    checkpoints.begin_attempt(ctx.run_dir, point, why="trainer restart")
    ctx.attempt, ctx.ledger = point.attempt, Ledger(**point.ledger)
    ctx.roles.trainer.resume(str(point.checkpoint))
    sync(ctx.roles)
    return point


def train_steps(ctx: Context, store: DataStore, eval_set: list[Problem], eval_before: float,
                point: checkpoints.ResumePoint | None) -> dict:
    """The RL steps. Step s sends its update to the trainer and, when rollouts run ahead (max_staleness >= 1),
    goes on to step s+1's batches while it trains; the update is finished (and the weights synced) at the
    start of step s+1, then the step is closed: its record written, its eval and checkpoint when due.
    Returns how busy each group was."""
    cfg, pending, busy = ctx.cfg, None, {"train": 0.0, "eval": 0.0}
    feed = Feed(ctx, depth=cfg.rollout.max_staleness, next_key=point.next_key if point else 1)
    t0 = time.perf_counter()
    with Tracker(cfg, ctx.run_dir, ctx.progress, append=bool(point)) as metrics:
        for step in range((point.step if point else 0) + 1, cfg.run.steps + 1):
            if pending:
                close_step(ctx, finish_update(ctx, *pending), metrics, eval_set, busy, feed, eval_before)
            feed.top_up()
            pending = rl_step(ctx, store, feed, step)
        if pending:
            close_step(ctx, finish_update(ctx, *pending), metrics, eval_set, busy, feed, eval_before)
    unused = feed.drain()
    wall = time.perf_counter() - t0 - busy["eval"]
    add_device_seconds(ctx, feed, busy["train"], wall)
    return {"rl_seconds": wall, "trainer_idle_fraction": 1 - busy["train"] / wall,
            "rollout_idle_fraction": 1 - sum(feed.busy) / (len(feed.busy) * wall), "unused_tokens": unused}


def close_step(ctx: Context, record: dict, metrics: Tracker, eval_set: list[Problem], busy: dict, feed: Feed,
               eval_before: float) -> None:
    """A step whose update is synced: mid-run eval when due, its metrics line, a step checkpoint when due."""
    cfg, step = ctx.cfg, record["step"]
    busy["train"] += record["train_seconds"]
    if cfg.eval.every and step % cfg.eval.every == 0 and step < cfg.run.steps:
        t_eval = time.perf_counter()
        record["eval"] = evaluate(ctx, eval_set, step)
        busy["eval"] += time.perf_counter() - t_eval
    metrics.step(record)
    due = cfg.run.checkpoint_every and step % cfg.run.checkpoint_every == 0
    if (due or interrupt.requested()) and step < cfg.run.steps:
        checkpoints.save(ctx, step, feed.oldest_key(), eval_before)
        interrupt.check(step, eval_before)   # a stop signal ends the run here, at this checkpoint


def rl_step(ctx: Context, store: DataStore, feed: Feed, step: int) -> tuple[dict, object, float]:
    """sample -> verify -> prune -> store -> advantages -> send the update; returns the step's metrics record
    so far, the pending update and the step's start time (`finish_update` completes the record)."""
    t_step, cfg = time.perf_counter(), ctx.cfg
    got = gather(ctx, feed)
    t_driver = time.perf_counter()   # the driver's own share of the step: prune, store, batch, hand the update over
    chosen = select_verified(got.problems, got.trees, got.leaves, cfg.train.max_per_problem, ctx.env.signature)
    shard = store.write(step, provenance(ctx, chosen, step, store.attempt))
    write_samples(ctx.run_dir, step, got.leaves, ctx.tokenizer, cfg.track.samples)
    batch, dropped = ALGOS[cfg.train.algo].batch(got.trees, chosen.sequences, cfg.train.shared_spans,
                                                 cfg.rollout.prompts_per_step)
    update = ctx.roles.trainer.start_train(batch) if batch else None
    led, generated = ctx.ledger, got.generated_tokens() + got.stale_tokens
    mark = led.state()
    led.driver_seconds += time.perf_counter() - t_driver
    tools = led.add_sampled(got.trees, got.rollout_seconds, got.leaves, chosen.verified_tokens, got.verify_seconds,
                            got.stale_tokens)
    led.verified_bytes += shard.stat().st_size if shard else 0
    record = {"step": step, "prompts": len(got.problems), "batches": got.batches,
              "leaves": len(got.leaves), "forks": sum(t.forks() for t in got.trees), "pass_rate": chosen.pass_rate,
              "solved_rate": chosen.solved_rate, "verified_samples": len(chosen.sequences),
              "distinct_verified": chosen.distinct, "dropped_trees": dropped, "staleness": got.staleness,
              "stale_batches": got.stale_batches, "generated_tokens": generated,
              "verified_tokens": chosen.verified_tokens,
              "tokens_per_s": got.generated_tokens() / got.rollout_seconds if got.rollout_seconds else 0.0,
              "rollout_seconds": got.rollout_seconds, "verify_seconds": got.verify_seconds,
              "verify_leaves_per_s": len(got.leaves) / got.verify_seconds if got.verify_seconds else 0.0,
              **rollout_stats(got.leaves, got.trees), **led.since(mark, STEP_ROLLOUT), **tools,
              "verified_with_tool": sum(x.tool_calls > 0 for _, x in chosen.samples) / max(len(chosen.samples), 1)}
    return record, update, t_step


def finish_update(ctx: Context, record: dict, update, t_step: float) -> dict:
    """Wait for a step's update, sync the new weights, and complete the step's metrics record."""
    stats = ctx.roles.trainer.finish_train(update) if update is not None else None
    version, sync_s = sync(ctx.roles)
    led = ctx.ledger
    mark = led.state()
    if stats:
        led.add_train(stats)
    led.add_sync(sync_s, ctx.roles.published.bytes)
    return {**record, "policy_version": version, "trained_tokens": stats.trained_tokens if stats else 0,
            "loss": stats.loss if stats else None, "clip_fraction": stats.clip_fraction if stats else None,
            "kl": stats.kl if stats else None, "grad_norm": stats.grad_norm if stats else None,
            "lr": stats.lr if stats else None,
            "train_tokens_per_s": stats.processed_tokens / stats.seconds if stats and stats.seconds else 0.0,
            "mismatch": stats.mismatch if stats else None,
            "train_seconds": stats.seconds if stats else 0.0, "sync_seconds": sync_s,
            "sync_bytes": ctx.roles.published.bytes, "sync_fallbacks": ctx.roles.faults.sync_fallbacks,
            "step_seconds": time.perf_counter() - t_step, "rollout_train_flop_ratio": led.ratio,
            "rollout_restarts": ctx.roles.faults.rollout_restarts,
            "trainer_restarts": ctx.roles.faults.trainer_restarts, **led.since(mark, STEP_TRAIN)}


def add_device_seconds(ctx: Context, feed: Feed, train_busy: float, wall: float) -> None:
    """Busy and idle device-seconds of both groups over `wall` (a device: a GPU, or a worker slot without one)."""
    r, t = ctx.cfg.rollout, ctx.cfg.train
    per_worker, per_trainer = r.gpus_per_worker or 1.0, t.gpus or 1.0
    ctx.ledger.add_busy("rollout", sum(feed.busy) * per_worker, len(feed.busy) * per_worker * wall)
    ctx.ledger.add_busy("train", train_busy * t.workers * per_trainer, t.workers * per_trainer * wall)


def gather(ctx: Context, feed: Feed) -> Rollouts:
    """Take and verify batches of prompts_per_step problems until the step has enough: the token budget
    (rollout.tokens_per_step) and, for policy-gradient objectives, prompts_per_step informative trees
    (dynamic sampling); at most rollout.max_batches_per_step batches. A batch from a policy more than
    rollout.max_staleness versions behind the one this step's update starts from is dropped unverified."""
    cfg, got = ctx.cfg, Rollouts()
    algo = ALGOS[cfg.train.algo]
    while got.batches < cfg.rollout.max_batches_per_step:
        batch, trees, seconds = feed.take()
        feed.top_up()  # the workers start the next batch while this one is verified
        got.batches += 1
        got.rollout_seconds += seconds
        lag = ctx.roles.published.version - min(t.policy_version for t in trees)
        if lag > cfg.rollout.max_staleness:
            got.stale_batches += 1
            got.stale_tokens += sum(t.generated_tokens() for t in trees)
            continue
        got.staleness = max(got.staleness, lag)
        leaves, verify_s = verify_leaves(ctx, batch.problems, trees)
        got.problems += batch.problems
        got.trees += trees
        got.leaves += leaves
        got.verify_seconds += verify_s
        budget_met = got.generated_tokens() >= cfg.rollout.tokens_per_step
        if budget_met and algo.enough(got.trees, cfg.rollout.prompts_per_step):
            break
    return got


def verify_leaves(ctx: Context, problems: list[Problem], trees: list[Tree]) -> tuple[list[Leaf], float]:
    """Every leaf's text and verdict, verified on the pool; rewards are written onto the tree leaves."""
    t0 = time.perf_counter()
    leaves = []
    for p, tree in zip(problems, trees):
        for node in tree.leaves():
            ids = tree.completion_ids(node)
            text = ctx.tokenizer.decode(ids, skip_special_tokens=True)
            record = {**ctx.env.verifier_record(p, text), "timeout_s": ctx.cfg.verify.timeout_s}
            leaves.append(Leaf(tree, node, ids, text, record))
    for leaf, result in zip(leaves, dispatch.verify(ctx.roles, [leaf.record for leaf in leaves]), strict=True):
        leaf.result = result
        leaf.tree.nodes[leaf.node].reward = leaf.reward
    return leaves, time.perf_counter() - t0


def provenance(ctx: Context, chosen: Selection, step: int, attempt: int = 0) -> list[dict]:
    """The data-set rows of a step's chosen samples; attempt: which (re)start of the run sampled them."""
    env, seed = ctx.env, ctx.cfg.run.seed
    version = verifier_version(env.verifier)
    trees = {leaf.tree.tree_id: leaf.tree for _, leaf in chosen.samples}
    tree_value = {tree_id: tree.values()[0] for tree_id, tree in trees.items()}  # V(root): once per tree, not per row
    decode = lambda ids: ctx.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731  as verify_leaves decodes
    return [{"sample_id": sample_id(leaf.tree.tree_id, leaf.branch_path, attempt),
             "env": env.name, "problem_id": p.id, "prompt": p.prompt, "completion": leaf.text, "answer": p.answer,
             "policy_version": leaf.tree.policy_version, "verifier": env.verifier, "verifier_version": version,
             "verdict": leaf.result.verdict, "score": leaf.result.score, "tree_id": leaf.tree.tree_id,
             "branch_path": leaf.branch_path, "tree_value": tree_value[leaf.tree.tree_id],
             "num_tokens": len(leaf.ids), "seed": seed, "step": step, "attempt": attempt,
             "roles": leaf.role_spans(decode), "tool_calls": leaf.tool_calls}
            for p, leaf in chosen.samples]


def sync(roles: Roles, published: Published | None = None) -> tuple[int, float]:
    """Publish the trainer's weights (or take `published`, a fixed policy's) once to the object store; every
    rollout worker loads that copy. Returns (policy version, seconds). Raises if a worker holds another version or
    checksum."""
    t0 = time.perf_counter()
    published = published if published is not None else roles.trainer.publish()
    loaded = dispatch.load_weights(roles, published)
    for i, got in enumerate(loaded):
        if (got["version"], got["checksum"]) != (published.version, published.checksum):
            raise RuntimeError(f"weight sync failed: rollout worker {i} holds version {got['version']} "
                               f"checksum {got['checksum'][:12]}, trainer published {published.version} "
                               f"{published.checksum[:12]}")
    return published.version, time.perf_counter() - t0


def evaluate(ctx: Context, problems: list[Problem], step: int) -> float:
    """Held-out pass@1: one greedy chain per problem, verified like any other leaf."""
    prompts = [(p.id, ctx.tokenizer.encode(p.prompt)) for p in problems]
    trees, _ = dispatch.collect(ctx.roles, dispatch.submit(ctx.roles, problems, prompts, key=step, greedy=True))
    for i, tree in enumerate(trees):
        tree.tree_id = f"{tree.problem_id}#e{step}#{i}"
    leaves, _ = verify_leaves(ctx, problems, trees)
    ctx.ledger.add_eval(sum(t.generated_tokens() + len(t.prompt_ids) for t in trees),
                        sum(t.context_sum() for t in trees))
    return sum(leaf.passed for leaf in leaves) / len(problems)
