"""The driver: one run from config to summary, phase by phase.

    prepare (env, problems, run dir) -> launch roles on Ray -> warm start -> sync v0 -> eval_before
    -> steps: sample -> verify [-> more batches] -> prune -> store -> advantages -> update -> sync
    -> eval_after -> checkpoint, summary

The driver owns the tokenizer (text <-> ids), the ledger and the files of the run directory; the
roles own the compute. It never runs a model itself.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray

from branchrl.envs import Environment, Problem, load_env
from branchrl.verifiers import verifier_version

from .advantages import informative
from .algos import ALGOS, pg_batch
from .config import Config, ConfigError, dump_config
from .datastore import DataStore
from .launch import Roles, launch, start_ray
from .ledger import Ledger
from .models import load_tokenizer
from .progress import Progress
from .prune import Selection, select_verified
from .sampler import BranchSettings
from .tree import Tree


@dataclass
class Context:
    cfg: Config
    env: Environment
    tokenizer: object
    roles: Roles
    ledger: Ledger
    run_dir: Path
    progress: Progress
    settings: BranchSettings   # the branch policy's settings, with the env's answer-start tokens


@dataclass
class Rollouts:
    """One step's sampled and verified batches, concatenated."""
    problems: list[Problem] = field(default_factory=list)
    trees: list[Tree] = field(default_factory=list)
    leaves: list[dict] = field(default_factory=list)
    rollout_seconds: float = 0.0
    verify_seconds: float = 0.0
    batches: int = 0

    def generated_tokens(self) -> int:
        return sum(t.generated_tokens() for t in self.trees)


def run(cfg: Config, run_dir: Path, address: str | None = None) -> dict:
    """Run the whole pipeline; returns the summary (also written to run_dir/summary.json)."""
    t0 = time.perf_counter()
    env, tokenizer, eval_set, warm_set = prepare(cfg, run_dir)
    progress = Progress(cfg.run.steps)
    progress.note(f"run dir {run_dir}; starting Ray")
    start_ray(cfg, address)
    roles = launch(cfg)
    try:
        info = roles.trainer.describe()
        ctx = Context(cfg, env, tokenizer, roles, Ledger(info["flop_params"], info["layers"], info["hidden"]),
                      run_dir, progress, branch_settings(cfg, env, tokenizer))
        summary = train_and_evaluate(ctx, eval_set, warm_set)
    finally:
        roles.shutdown()
    summary["wall_seconds"] = time.perf_counter() - t0
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    progress.note(f"eval {summary['eval_before']:.3f} -> {summary['eval_after']:.3f}; "
                  f"summary in {run_dir / 'summary.json'}")
    return summary


def prepare(cfg: Config, run_dir: Path):
    """Everything that can fail on bad input, done before Ray starts: env, problems, lengths, run dir."""
    env = load_env(cfg.env.name, **cfg.env.kwargs)
    eval_set = env.eval_problems(cfg.eval.problems)
    warm_set = env.warm_start_problems(cfg.warm_start.problems, cfg.run.seed) if cfg.warm_start.problems else []
    tokenizer = load_tokenizer(cfg.model)
    limit = cfg.model.tiny.max_position if cfg.model.path is None else None
    if limit is not None:
        longest = max(len(tokenizer.encode(p.prompt)) for p in eval_set + env.train_problems(8, 0))
        if longest + cfg.rollout.max_new_tokens > limit:
            raise ConfigError(f"rollout.max_new_tokens={cfg.rollout.max_new_tokens} plus the longest prompt ({longest} "
                              f"tokens) exceeds model.tiny.max_position={limit}")
        worked = max((len(tokenizer.encode(p.prompt + p.solution)) + 1 for p in warm_set), default=0)
        if worked > limit:
            raise ConfigError(f"a warm-start example is {worked} tokens, over model.tiny.max_position={limit}")
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"output dir {run_dir} is not empty; pass another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, run_dir / "config.yaml")
    return env, tokenizer, eval_set, warm_set


def branch_settings(cfg: Config, env: Environment, tokenizer) -> BranchSettings:
    """cfg.branch plus the token ids that start the env's answer marker (alone and after a space, as
    BPE vocabularies spell it both ways). Token-level on purpose: the workers hold no tokenizer."""
    marker = env.answer_marker
    ids = {tokenizer.encode(m, add_special_tokens=False)[0] for m in (marker, " " + marker)} if marker else set()
    return BranchSettings.from_config(cfg.branch, tuple(sorted(ids)))


def train_and_evaluate(ctx: Context, eval_set: list[Problem], warm_set: list[Problem]) -> dict:
    trainer, cfg = ctx.roles.trainer, ctx.cfg
    if warm_set:
        ctx.progress.note(f"warm start: SFT on {len(warm_set)} worked problems x {cfg.warm_start.epochs} epochs")
        stats = trainer.warm_start([(p.prompt, p.solution) for p in warm_set])
        ctx.progress.note(f"warm start done in {stats['seconds']:.1f}s (loss {stats['loss']:.3f})")
        trainer.save(str(ctx.run_dir / "checkpoints" / "warm_start"))
    sync(ctx.roles)
    eval_before = evaluate(ctx, eval_set, step=0)
    ctx.progress.note(f"eval_before {eval_before:.3f} on {len(eval_set)} held-out problems")
    store = DataStore(ctx.run_dir / "data")
    with open(ctx.run_dir / "metrics.jsonl", "w") as metrics:
        for step in range(1, cfg.run.steps + 1):
            record = rl_step(ctx, store, step)
            if cfg.eval.every and step % cfg.eval.every == 0 and step < cfg.run.steps:
                record["eval"] = evaluate(ctx, eval_set, step)
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
            ctx.progress.step(record)
    eval_after = evaluate(ctx, eval_set, cfg.run.steps)
    trainer.save(str(ctx.run_dir / "checkpoints" / "final"))
    return {"eval_before": eval_before, "eval_after": eval_after, "eval_problems": len(eval_set),
            "steps": cfg.run.steps, "verified_samples": store.rows_written, "seed": cfg.run.seed,
            **ctx.ledger.totals()}


def rl_step(ctx: Context, store: DataStore, step: int) -> dict:
    """sample -> verify -> prune -> store -> advantages -> update -> sync; returns the step's metrics record."""
    t_step, cfg = time.perf_counter(), ctx.cfg
    got = gather(ctx, step)
    chosen = select_verified(got.problems, got.trees, got.leaves, cfg.train.max_per_problem, ctx.env.signature)
    store.write(step, provenance(ctx, chosen, step))
    algo = ALGOS[cfg.train.algo]
    batch, dropped = (pg_batch(algo, got.trees, cfg.train.shared_spans, cfg.rollout.prompts_per_step)
                      if algo.policy_gradient else (chosen.sequences, 0))
    update = ctx.roles.trainer.train(batch) if batch else None
    version, sync_s = sync(ctx.roles)
    led, generated = ctx.ledger, got.generated_tokens()
    led.add_rollout(generated, sum(len(t.prompt_ids) + t.reprefill_tokens for t in got.trees),
                    sum(t.context_sum() for t in got.trees), got.rollout_seconds)
    led.verified_tokens += chosen.verified_tokens
    led.verify_seconds += got.verify_seconds
    if update:
        led.add_train(update["trained_tokens"], update["processed_tokens"], update["context_sum"], update["seconds"])
    led.sync_seconds += sync_s
    return {"step": step, "policy_version": version, "prompts": len(got.problems), "batches": got.batches,
            "leaves": len(got.leaves), "forks": sum(t.forks() for t in got.trees), "pass_rate": chosen.pass_rate,
            "solved_rate": chosen.solved_rate, "verified_samples": len(chosen.sequences),
            "distinct_verified": chosen.distinct,
            "dropped_trees": dropped, "generated_tokens": generated, "verified_tokens": chosen.verified_tokens,
            "trained_tokens": update["trained_tokens"] if update else 0, "loss": update["loss"] if update else None,
            "clip_fraction": update.get("clip_fraction") if update else None,
            "tokens_per_s": generated / got.rollout_seconds if got.rollout_seconds else 0.0,
            "rollout_seconds": got.rollout_seconds, "verify_seconds": got.verify_seconds,
            "train_seconds": update["seconds"] if update else 0.0,
            "sync_seconds": sync_s, "step_seconds": time.perf_counter() - t_step,
            "rollout_train_flop_ratio": led.ratio}


def gather(ctx: Context, step: int) -> Rollouts:
    """Sample and verify batches of prompts_per_step problems until the step has enough: the token budget
    (rollout.tokens_per_step) and, for policy-gradient objectives, prompts_per_step informative trees
    (dynamic sampling); at most rollout.max_batches_per_step batches."""
    cfg, got = ctx.cfg, Rollouts()
    pg = ALGOS[cfg.train.algo].policy_gradient
    while got.batches < cfg.rollout.max_batches_per_step:
        key = step + 10_000_000 * got.batches   # seeds this batch's problems and sampler; distinct in a run
        problems = ctx.env.train_problems(cfg.rollout.prompts_per_step, seed=cfg.run.seed * 1_000_003 + key)
        trees, rollout_s = sample(ctx, problems, step, key=key, first=len(got.trees))
        leaves, verify_s = verify_leaves(ctx, problems, trees)
        got.problems += problems
        got.trees += trees
        got.leaves += leaves
        got.rollout_seconds += rollout_s
        got.verify_seconds += verify_s
        got.batches += 1
        budget_met = got.generated_tokens() >= cfg.rollout.tokens_per_step
        if budget_met and (not pg or sum(map(informative, got.trees)) >= cfg.rollout.prompts_per_step):
            break
    return got


def sample(ctx: Context, problems: list[Problem], step: int, greedy: bool = False, key: int | None = None,
           first: int = 0) -> tuple[list[Tree], float]:
    """Split the prompts over the rollout workers; returns trees in problem order and the phase's wall time.
    key seeds the samplers (default: step); first numbers the trees after those already sampled this step."""
    t0 = time.perf_counter()
    prompts = [(p.id, ctx.tokenizer.encode(p.prompt)) for p in problems]
    workers = ctx.roles.rollout
    shards = [prompts[i::len(workers)] for i in range(len(workers))]
    seed_key = step if key is None else key
    results = ray.get([w.rollout.remote(s, seed_key, ctx.settings, greedy) for w, s in zip(workers, shards) if s])
    trees: list[Tree] = [None] * len(prompts)
    for i, (shard_trees, _) in enumerate(results):
        trees[i::len(workers)] = shard_trees
    for i, tree in enumerate(trees, start=first):  # workers number trees within their shard; make ids run-unique
        tree.tree_id = f"{tree.problem_id}#s{step}{'e' if greedy else ''}#{i}"
    return trees, time.perf_counter() - t0


def verify_leaves(ctx: Context, problems: list[Problem], trees: list[Tree]) -> tuple[list[dict], float]:
    """Every leaf's text and verdict, verified on the pool; rewards are written onto the tree leaves."""
    t0 = time.perf_counter()
    leaves = []
    for p, tree in zip(problems, trees):
        for leaf in tree.leaves():
            ids = tree.completion_ids(leaf)
            text = ctx.tokenizer.decode(ids, skip_special_tokens=True)
            leaves.append({"tree": tree, "leaf": leaf, "ids": ids, "text": text,
                           "record": {**ctx.env.verifier_record(p, text), "timeout_s": ctx.cfg.verify.timeout_s}})
    pool = ctx.roles.verifiers
    records = [leaf["record"] for leaf in leaves]
    shards = ray.get([v.verify_batch.remote(records[i::len(pool)]) for i, v in enumerate(pool)])
    for i, (results, _) in enumerate(shards):
        for leaf, result in zip(leaves[i::len(pool)], results):
            leaf["result"] = result
            leaf["tree"].nodes[leaf["leaf"]].reward = result["score"] if result["verdict"] == "pass" else 0.0
    return leaves, time.perf_counter() - t0


def provenance(ctx: Context, chosen: Selection, step: int) -> list[dict]:
    env, seed = ctx.env, ctx.cfg.run.seed
    version = verifier_version(env.verifier)
    trees = {leaf["tree"].tree_id: leaf["tree"] for _, leaf in chosen.samples}
    tree_value = {tree_id: tree.values()[0] for tree_id, tree in trees.items()}  # once per tree, not per row
    return [{"env": env.name, "problem_id": p.id, "prompt": p.prompt, "completion": leaf["text"], "answer": p.answer,
             "policy_version": leaf["tree"].policy_version, "verifier": env.verifier, "verifier_version": version,
             "verdict": leaf["result"]["verdict"], "score": leaf["result"]["score"], "tree_id": leaf["tree"].tree_id,
             "branch_path": leaf["tree"].branch_path(leaf["leaf"]), "tree_value": tree_value[leaf["tree"].tree_id],
             "num_tokens": len(leaf["ids"]), "seed": seed, "step": step}
            for p, leaf in chosen.samples]


def sync(roles: Roles) -> tuple[int, float]:
    """Publish the trainer's weights once to the object store; every rollout worker loads that copy.
    Returns (policy version, seconds). Raises if a worker holds another version or checksum."""
    t0 = time.perf_counter()
    published = roles.trainer.publish()
    loaded = ray.get([w.set_weights.remote(published["ref"]) for w in roles.rollout])
    for i, got in enumerate(loaded):
        if (got["version"], got["checksum"]) != (published["version"], published["checksum"]):
            raise RuntimeError(f"weight sync failed: rollout worker {i} holds version {got['version']} "
                               f"checksum {got['checksum'][:12]}, trainer published {published['version']} "
                               f"{published['checksum'][:12]}")
    return published["version"], time.perf_counter() - t0


def evaluate(ctx: Context, problems: list[Problem], step: int) -> float:
    """Held-out pass@1: one greedy chain per problem, verified like any other leaf."""
    trees, _ = sample(ctx, problems, step, greedy=True)
    leaves, _ = verify_leaves(ctx, problems, trees)
    ctx.ledger.add_eval(sum(t.generated_tokens() + len(t.prompt_ids) for t in trees), sum(t.context_sum() for t in trees))
    return sum(leaf["result"]["verdict"] == "pass" for leaf in leaves) / len(problems)
