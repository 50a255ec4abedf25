"""`branchrl generate`: a verified data set from a fixed policy (a demo run's checkpoint), with no training group;
run.steps bounds it; a real `branchrl generate` SIGKILLed mid-walk and resumed does no problem twice and loses
nothing; the journal's crash rules; bad input is one line and exit 2."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_run import SMALL_RUN

from branchrl.cli import main
from branchrl.config import dump_config, load_config
from branchrl.data.datastore import DataStore, shard_name

BRANCHRL = str(Path(sys.executable).with_name("branchrl"))
# echo: every right answer reads "#### N", so one distinct sample per problem; a problem whose two trees
# (16 leaves) find none is done unsolved
WALK = ["generate.per_problem=1", "generate.max_leaves_per_problem=16", "rollout.prompts_per_step=4",
        "run.steps=1000"]


@pytest.fixture(scope="module")
def demo_checkpoint(ray_cluster, tmp_path_factory) -> str:
    """A one-step demo run's final checkpoint: the echo warm start makes about 40% of leaves pass."""
    from branchrl.loop import run

    run_dir = tmp_path_factory.mktemp("demo") / "run"
    run(load_config(None, [*SMALL_RUN, "run.steps=1", "eval.every=0"]), run_dir)
    return str(run_dir / "checkpoints" / "final")


def _rows(out: Path) -> list[dict]:
    """Every stored row, read straight from the shards (what a user's loader would see)."""
    return [row for shard in sorted((out / "data").glob("*.parquet")) for row in pq.read_table(shard).to_pylist()]


def _journal(out: Path) -> list[dict]:
    """The journal lines that count: their shard is on disk, or they stored no rows (generate.py's rule)."""
    lines = [json.loads(x) for x in (out / "generate_journal.jsonl").read_text().splitlines()]
    return [x for x in lines if not x["rows"] or (out / "data" / shard_name(x["step"], x["attempt"])).exists()]


def _check_walk(out: Path, problems: int, per_problem: int) -> dict:
    """The walk is complete, every problem done exactly once and never sampled after, every row verified, no
    sample id twice, at most per_problem distinct samples per problem."""
    done = Counter(pid for line in _journal(out) for pid, (_, finished) in line["problems"].items() if finished)
    assert len(done) == problems and set(done.values()) == {1}, "a problem is done twice, or not at all"
    done_at = {pid: line["step"] for line in _journal(out) for pid, (_, fin) in line["problems"].items() if fin}
    rows = _rows(out)
    assert all(row["verdict"] == "pass" and row["score"] == 1.0 for row in rows)
    assert len({r["sample_id"] for r in rows}) == len(rows), "a sample id is stored twice"
    assert all(r["step"] <= done_at[r["problem_id"]] for r in rows), "a problem was sampled after it was done"
    per = Counter(r["problem_id"] for r in rows)
    assert max(per.values(), default=0) <= per_problem
    assert all(len({r["completion"].strip() for r in rows if r["problem_id"] == p}) == n for p, n in per.items())
    return done_at


def test_generate_from_a_demo_checkpoint_makes_a_loadable_verified_data_set_without_a_trainer(
        ray_cluster, demo_checkpoint, tmp_path):
    import datasets
    from ray.util import placement_group_table

    from branchrl.generate import generate

    cfg = load_config(None, [*SMALL_RUN, *WALK, f"model.path={demo_checkpoint}", "generate.problems=24"])
    groups_before = set(placement_group_table())
    summary = generate(cfg, tmp_path / "gen")
    created = [g["name"] for k, g in placement_group_table().items() if k not in groups_before]
    assert created and not [n for n in created if "training" in n], created
    assert summary["placement"]["training"] == [] and len(summary["placement"]["inference"]) == 2
    assert json.loads((tmp_path / "gen" / "summary.json").read_text()) == summary
    assert summary["complete"] and summary["problems_done"] == summary["problems"] == 24
    assert not {"trained_tokens", "train_flops", "train_seconds", "rollout_train_flop_ratio"} & summary.keys()
    assert summary["generated_tokens"] > 0 and summary["rollout_flops"] > 0 and summary["sync_bytes"] > 0
    data = datasets.load_dataset("parquet", data_dir=str(tmp_path / "gen" / "data"), split="train")
    assert data.num_rows == summary["verified_samples"] > 0
    assert set(data["verdict"]) == {"pass"} and len(set(data["sample_id"])) == data.num_rows
    assert set(data["policy_version"]) == {0} and set(data.column_names) == set(_rows(tmp_path / "gen")[0])
    assert summary["problems_solved"] == len(set(data["problem_id"]))
    _check_walk(tmp_path / "gen", 24, 1)
    assert sum(leaves for line in _journal(tmp_path / "gen") for leaves, _ in line["problems"].values()) \
        == summary["leaves"] <= 24 * 16


def test_run_steps_bounds_the_walk_and_resume_finishes_it_with_the_tiny_model(ray_cluster, tmp_path):
    from branchrl.generate import generate, resume

    out = tmp_path / "gen"
    cfg = load_config(None, [*SMALL_RUN, *WALK, "generate.problems=12", "run.steps=2", "rollout.workers=1"])
    first = generate(cfg, out)
    assert (first["steps"], first["complete"], first["attempt"]) == (2, False, 0)
    assert first["problems_done"] < 12
    second = resume(out, overrides=["run.steps=100"])
    assert second["complete"] and second["attempt"] == 1 and second["problems_done"] == 12
    assert load_config(out / "config.yaml").run.steps == 100
    _check_walk(out, 12, 1)


def test_a_generate_killed_mid_walk_resumes_without_redoing_a_problem_or_losing_a_sample(demo_checkpoint, tmp_path):
    config, out = tmp_path / "gen.yaml", tmp_path / "out"
    dump_config(load_config(None, [*SMALL_RUN, *WALK, f"model.path={demo_checkpoint}", "generate.problems=120"]),
                config)
    env = {**os.environ, "RAY_ADDRESS": ""}  # its own embedded Ray, not the test session's
    driver = subprocess.Popen([BRANCHRL, "generate", str(config), "--out", str(out)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    journal, deadline = out / "generate_journal.jsonl", time.monotonic() + 600
    while (not journal.exists() or len(journal.read_text().splitlines()) < 6) and driver.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.02)
    assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    before = {r["sample_id"] for r in _rows(out)}
    done_before = {pid for line in _journal(out) for pid, (_, fin) in line["problems"].items() if fin}
    assert before and done_before and not (out / "summary.json").exists()

    done = subprocess.run([BRANCHRL, "generate", "--resume", str(out)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["attempt"] == 1 and summary["problems_done"] == 120
    assert summary["placement"]["training"] == []
    _check_walk(out, 120, 1)
    rows = _rows(out)
    assert before <= {r["sample_id"] for r in rows}, "a sample stored before the kill is gone"
    assert summary["verified_samples"] == len(rows)
    redone = {r["problem_id"] for r in rows if r["attempt"] == 1}
    assert not redone & done_before, "a problem done before the kill was sampled again"


# multiply with 2-digit x 1-digit operands and one call per episode: a tiny model warm-started for 30 short epochs
# writes `<py>print(39*8)</py>` reliably and copies the output into its answer on about two leaves in three
TOOL_MODEL = ["model.tiny.hidden_size=64", "model.tiny.layers=2", "model.tiny.heads=2", "model.tiny.kv_heads=2",
              "model.tiny.intermediate_size=128", "model.tiny.max_position=64", "train.threads=1", "env.name=multiply",
              "env.kwargs={digits: 2, digits_b: 1, max_turns: 1}"]


@pytest.mark.parametrize("tool_pool", ["worker", "verifiers"])
def test_generate_with_a_tool_env_counts_the_tool_calls_in_its_ledger_as_run_does(ray_cluster, tmp_path, tool_pool):
    from branchrl.envs import load_env
    from branchrl.generate import generate
    from branchrl.training.trainer import Trainer

    cfg = load_config(None, TOOL_MODEL)
    env = load_env(cfg.env.name, **cfg.env.kwargs)
    trainer = Trainer(cfg)
    trainer.sft([(p.prompt, env.worked(p)) for p in env.warm_start_problems(48, 0)], epochs=30, lr=0.003, batch_size=8)
    trainer.save(str(tmp_path / "ckpt"))
    # independent chains (no forks): every call belongs to exactly one leaf, which the relations below rely on
    cfg = load_config(None, [*TOOL_MODEL, f"model.path={tmp_path / 'ckpt'}", "generate.problems=8",
                             "generate.per_problem=2", "generate.max_leaves_per_problem=8", "branch.policy=independent",
                             "branch.roots=4", "branch.max_leaves=4", "rollout.prompts_per_step=4",
                             "rollout.max_new_tokens=48", "rollout.workers=1", "rollout.tool_workers=2",
                             "rollout.temperature=0.7", f"rollout.tool_pool={tool_pool}"])
    out = tmp_path / "gen"
    summary = generate(cfg, out)
    rows, records = _rows(out), [line["record"] for line in _journal(out)]
    assert rows and summary["verified_samples"] == len(rows)
    for key in ("tool_calls", "tool_seconds", "appended_tokens", "tool_unavailable"):   # the batches add up
        assert summary[key] == pytest.approx(sum(r[key] for r in records)), key
    assert summary["tool_unavailable"] == 0 and summary["tool_seconds"] > 0
    for r in rows:   # a stored row's tool_calls is the tool spans in its roles
        assert r["tool_calls"] == sum(s["role"] == "tool" for s in r["roles"]) == 1
    # The ledger counts every call the rollouts made; a stored row only the calls on its own path. So calls on leaves
    # that failed, or passed but were pruned as a duplicate (per_problem, signatures), or whose output was cut by the
    # token limit count in the ledger and in no row: with independent chains the rows' sum is a lower bound, and
    # max_turns calls per leaf an upper one. (With forks a call before the fork point counts once in the ledger and
    # once in every stored row below it, so there the rows' sum may exceed the ledger's.)
    stored_calls = sum(r["tool_calls"] for r in rows)
    assert 0 < stored_calls <= summary["tool_calls"] <= summary["leaves"] * env.max_turns
    appended = sum(s["end"] - s["start"] for r in rows for s in r["roles"] if s["role"] == "tool")   # chars = tokens
    assert 0 < appended <= summary["appended_tokens"]
    assert summary["leaves"] > len(rows) and summary["tool_calls"] > stored_calls   # as measured: 64 vs 6


def test_resume_skips_a_journal_line_whose_shard_never_landed_and_a_torn_last_line(tmp_path):
    from branchrl.envs import Problem, load_env
    from branchrl.generate import Walk, read_journal, restore

    env, out = load_env("echo"), tmp_path / "gen"
    problems = [Problem(id=str(n), prompt=f"{n}=", answer=str(n)) for n in (101, 102, 103)]
    row = {"sample_id": "101#b1#0/1", "env": "echo", "problem_id": "101", "prompt": "101=", "completion": "#### 101",
           "answer": "101", "policy_version": 0, "verifier": "math", "verifier_version": "math-1", "verdict": "pass",
           "score": 1.0, "tree_id": "101#b1#0", "branch_path": "1", "tree_value": 1.0, "num_tokens": 8, "seed": 0,
           "step": 1, "attempt": 0, "roles": [{"role": "policy", "start": 0, "end": 8}], "tool_calls": 0}
    DataStore(out / "data").write(1, [row])
    lines = [{"step": 1, "attempt": 0, "rows": 1, "problems": {"101": [8, True], "102": [8, False]}, "ledger": {}},
             {"step": 2, "attempt": 0, "rows": 1, "problems": {"102": [8, True]}, "ledger": {}},   # shard never written
             {"step": 3, "attempt": 0, "rows": 0, "problems": {"103": [16, True]}, "ledger": {}}]
    (out / "generate_journal.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"step": 4, "att')
    read = read_journal(out / "generate_journal.jsonl")
    assert read == lines and (out / "generate_journal.jsonl").read_text().endswith("}\n")   # the torn line is gone
    walk = Walk.start(problems)
    store, counted = restore(out, env, walk, read)
    assert [x["step"] for x in counted] == [1, 3] and store.attempt == 1
    assert walk.done == {"101": 1, "103": 3} and walk.leaves == {"101": 8, "102": 8, "103": 16}
    assert walk.seen["101"] == {env.signature("#### 101")}
    assert [p.id for p in walk.next_batch(4)] == ["102"]   # the only open problem


@pytest.mark.parametrize("args, message", [
    (["generate", "{cfg}", "--out", "{out}", "generate.problems=0"], "does not say how many train problems"),
    (["generate", "{cfg}", "--out", "{out}", "generate.max_leaves_per_problem=4"], "below one tree's leaf budget"),
    (["generate", "{cfg}", "--out", "{out}", "generate.split=test"], "generate.split"),
    (["generate", "{cfg}", "--out", "{out}", "generate.problems=800"], "found only"),
    (["generate", "--resume", "{out}"], "holds no config.yaml"),
    (["generate", "--resume", "{out}", "train.lr=1"], "may only be one of run.steps"),
    (["generate", "--resume", "{out}", "--out", "{out}"], "takes no --out"),
    (["generate"], "needs a config file"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    cfg = tmp_path / "gen.yaml"
    dump_config(load_config(None, ["env.name=echo"]), cfg)
    argv = [a.format(cfg=cfg, out=tmp_path / "out") for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("from_checkpoint", [False, True])
def test_a_fixed_policy_is_described_without_weights_and_published_as_a_trainer_publishes_version_0(
        tmp_path, from_checkpoint):
    """What the driver learns on the meta device equals the trainer's `describe`, and rollout worker 0's weights
    equal trainer version 0's, byte for byte: a tiny model built from run.seed, or an HF directory."""
    from branchrl.models import describe_unloaded
    from branchrl.rollout.worker import RolloutWorker
    from branchrl.training.trainer import Trainer

    cfg = load_config(None, [*SMALL_RUN, "run.seed=3"])
    if from_checkpoint:
        Trainer(cfg).save(str(tmp_path / "ckpt"))
        cfg = load_config(None, [*SMALL_RUN, f"model.path={tmp_path / 'ckpt'}"])
    trainer = Trainer(cfg)
    info = trainer.describe()
    assert describe_unloaded(cfg.model, cfg.run.seed) == info
    worker = RolloutWorker(cfg, info.config, info.eos_id, info.pad_id, 0)
    published, weights = worker.publish_fixed()
    assert (published.version, published.checksum) == (0, trainer.publish()[0].checksum)
    assert worker.set_weights(weights)["checksum"] == published.checksum
