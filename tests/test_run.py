"""A whole run on real Ray actors: the run-directory contract users rely on (DESIGN.md)."""

import contextlib
import io
import json
import math
import re
import sys

import pytest

from branchrl.config import load_config
from branchrl.loop import run
from branchrl.models import load_policy

SUMMARY_KEYS = {"eval_before", "eval_after", "steps", "generated_tokens", "verified_tokens", "trained_tokens",
                "rollout_flops", "train_flops", "rollout_train_flop_ratio", "rollout_seconds", "train_seconds",
                "verify_seconds", "wall_seconds"}
PROVENANCE = ["env", "problem_id", "policy_version", "verifier", "verifier_version", "verdict", "tree_id",
              "branch_path", "seed"]
# the echo env (copy a number): after this warm start about 40% of sampled leaves pass on every seed, so each
# step has verified samples, mixed rewards and an update without depending on a lucky draw; its completions are
# all answer ("#### 218"), so forks must be allowed there
SMALL_RUN = ["env.name=echo", "branch.fork_in_answer=true", "model.tiny.hidden_size=64", "model.tiny.layers=2",
             "model.tiny.heads=2", "model.tiny.kv_heads=2", "model.tiny.intermediate_size=128",
             "model.tiny.max_position=48",
             "warm_start.problems=32", "warm_start.epochs=40", "warm_start.batch_size=8", "rollout.prompts_per_step=16",
             "rollout.max_new_tokens=16", "branch.entropy_threshold=0.3", "run.steps=3", "eval.problems=8",
             "eval.every=2", "train.threads=1"]


@pytest.fixture(scope="module")
def finished_run(ray_cluster, tmp_path_factory):
    """The run's console lines (stderr, where `Progress` writes) go to console.log beside the run dir, and on."""
    cfg = load_config(None, SMALL_RUN)
    run_dir = tmp_path_factory.mktemp("run") / "out"
    with contextlib.redirect_stderr(io.StringIO()) as console:
        summary = run(cfg, run_dir)
    (run_dir.parent / "console.log").write_text(console.getvalue())
    sys.stderr.write(console.getvalue())
    return cfg, run_dir, summary


def test_the_warm_start_prints_a_line_per_epoch(finished_run):
    cfg, run_dir, _ = finished_run
    lines = (run_dir.parent / "console.log").read_text().splitlines()
    epochs = [re.search(r"\] warm start epoch +(\d+)/40  loss \d+\.\d{3}  train [\d.]+k tok/s  elapsed \w+", x)
              for x in lines]
    assert [int(m[1]) for m in epochs if m] == list(range(1, cfg.warm_start.epochs + 1)), lines
    done = next(i for i, x in enumerate(lines) if "warm start done in" in x)
    assert "epoch 40/40" in lines[done - 1] and "eta" not in lines[done - 1] and "eta" in lines[done - 2]


def test_summary_has_the_contract_keys_and_consistent_totals(finished_run):
    cfg, run_dir, summary = finished_run
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    assert SUMMARY_KEYS <= summary.keys()
    assert summary["steps"] == 3 and 0 <= summary["eval_before"] <= 1 and 0 <= summary["eval_after"] <= 1
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3]
    assert sum(s["generated_tokens"] for s in steps) == summary["generated_tokens"]
    assert sum(s["trained_tokens"] for s in steps) == summary["trained_tokens"] > 0
    assert summary["rollout_train_flop_ratio"] == pytest.approx(summary["rollout_flops"] / summary["train_flops"])
    assert "eval" in steps[1] and "eval" not in steps[0]
    assert steps[-1]["policy_version"] == sum(s["trained_tokens"] > 0 for s in steps)
    assert [s["sync_bytes"] for s in steps] == [_state_bytes(cfg)] * 3 == [summary["sync_bytes"] / 3] * 3


def _state_bytes(cfg) -> int:
    """The bytes of the policy's state dict: what one weight sync sends to each rollout worker."""
    model, _ = load_policy(cfg.model, cfg.run.seed)
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def test_verified_samples_load_with_datasets_all_pass_with_provenance(finished_run):
    import datasets

    cfg, run_dir, summary = finished_run
    data = datasets.load_dataset("parquet", data_dir=str(run_dir / "data"), split="train")
    assert len(data) == summary["verified_samples"] > 0
    assert set(data["verdict"]) == {"pass"}
    for column in PROVENANCE:
        assert all(v is not None and v != "" for v in data[column]), column
    assert set(data["env"]) == {"echo"} and set(data["seed"]) == {cfg.run.seed}
    for row in data:  # every stored completion really answers its own problem
        assert row["completion"].rsplit("####", 1)[1].strip() == row["problem_id"]


def test_resolved_config_and_hf_checkpoints_load_back(finished_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg, run_dir, _ = finished_run
    assert load_config(run_dir / "config.yaml") == cfg
    for name in ("warm_start", "final"):
        model = AutoModelForCausalLM.from_pretrained(run_dir / "checkpoints" / name)
        tokenizer = AutoTokenizer.from_pretrained(run_dir / "checkpoints" / name)
        assert model.config.num_hidden_layers == 2 and tokenizer.decode(tokenizer.encode("12+3=")) == "12+3="


@pytest.mark.parametrize("policy, algo", [("independent", "grpo"), ("eptree", "tree"), ("entropy", "grpo")])
def test_each_policy_and_objective_runs_by_name(ray_cluster, tmp_path, policy, algo):
    """A step samples batches until its token budget is met and (dynamic sampling) it holds prompts_per_step
    trees with mixed rewards, or it hits max_batches_per_step; it trains exactly when some tree is mixed."""
    extra = [f"branch.policy={policy}", f"train.algo={algo}", "run.steps=2", "eval.every=0", "eval.problems=4",
             "branch.roots=3", "branch.max_leaves=5", "branch.top_n=1", "rollout.max_batches_per_step=2",
             "rollout.tokens_per_step=600"]
    run(load_config(None, SMALL_RUN + extra), tmp_path / "out")
    steps = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    for s in steps:
        informative = s["prompts"] - s["dropped_trees"]
        assert s["prompts"] == 16 * s["batches"]
        assert s["batches"] == 2 or (s["generated_tokens"] >= 600 and informative >= 16)
        assert (s["trained_tokens"] > 0) == (informative > 0)
        assert s["loss"] is None or math.isfinite(s["loss"])
        assert (s["forks"] > 0) == (policy != "independent")


def test_report_writes_markdown_and_three_plots(finished_run):
    from branchrl.data.report import write_report

    _, run_dir, summary = finished_run
    text = write_report(run_dir).read_text()
    assert f"{summary['eval_before']:.3f} → {summary['eval_after']:.3f}" in text
    assert "3 steps recorded" in text and "| rollout_train_flop_ratio |" in text
    for name in ("learning", "compute", "trees"):
        assert (run_dir / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ branchrl train --from-data
@pytest.fixture(scope="module")
def trained_from_data(finished_run, tmp_path_factory):
    """`branchrl train RUN/config.yaml --from-data RUN` from the run's warm-start checkpoint, in this process."""
    from branchrl.cli import main

    _, run_dir, _ = finished_run
    out = tmp_path_factory.mktemp("sft") / "out"
    argv = ["train", str(run_dir / "config.yaml"), "--from-data", str(run_dir), "--out", str(out),
            f"model.path={run_dir / 'checkpoints' / 'warm_start'}", "train.epochs=2", "train.lr=0.003"]
    assert main(argv) == 0
    return out, json.loads((out / "summary.json").read_text())


def test_train_from_data_evaluates_like_the_run_and_trains_every_stored_row(finished_run, trained_from_data):
    import datasets

    cfg, run_dir, run_summary = finished_run
    out, summary = trained_from_data
    rows = datasets.load_dataset("parquet", data_dir=str(run_dir / "data"), split="train")
    assert summary["rows"] == len(rows) == run_summary["verified_samples"]
    assert summary["problems"] == len(set(rows["problem_id"])) and summary["source"] == str(run_dir / "data")
    assert summary["eval_before"] == run_summary["eval_before"]  # the same weights, evaluated the run's way
    assert 0 <= summary["eval_after"] <= 1 and summary["eval_problems"] == cfg.eval.problems
    assert math.isfinite(summary["loss"]) and summary["trained_tokens"] > 0 and summary["epochs"] == 2
    saved = load_config(out / "config.yaml")
    assert (saved.train.epochs, saved.model.path) == (2, str(run_dir / "checkpoints" / "warm_start"))


def test_train_from_data_checkpoint_loads_and_its_parameters_changed(finished_run, trained_from_data):
    import torch
    from transformers import AutoModelForCausalLM

    _, run_dir, _ = finished_run
    out, _ = trained_from_data
    start = AutoModelForCausalLM.from_pretrained(run_dir / "checkpoints" / "warm_start").state_dict()
    final = AutoModelForCausalLM.from_pretrained(out / "checkpoints" / "final").state_dict()
    assert (out / "checkpoints" / "final" / "sharded" / ".metadata").is_file()   # master weights + Adam state
    assert final.keys() == start.keys()
    assert [k for k in final if torch.equal(final[k], start[k])] == []


def test_a_run_with_two_fsdp_trainers_completes_and_each_holds_half_the_state(ray_cluster, finished_run, tmp_path):
    """train.workers=2 (0.5 CPU each, so the roles fit the session's 4 CPUs), with gradient accumulation; each rank
    holds at most 55% of the parameter, gradient and optimizer bytes the one-trainer run's trainer held."""
    extra = ["train.workers=2", "train.cpus=0.5", "train.batch_size=8", "train.micro_batch_size=2", "run.steps=2",
             "eval.every=0", "eval.problems=4"]
    summary = run(load_config(None, SMALL_RUN + extra), tmp_path / "out")
    steps = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert summary["steps"] == 2 and summary["trained_tokens"] == sum(s["trained_tokens"] for s in steps) > 0
    assert all(s["loss"] is None or math.isfinite(s["loss"]) for s in steps)
    assert steps[-1]["policy_version"] == sum(s["trained_tokens"] > 0 for s in steps)
    assert (tmp_path / "out" / "checkpoints" / "final" / "sharded" / ".metadata").is_file()
    one = finished_run[2]["train_state_bytes_per_rank"]
    assert 0 < summary["train_state_bytes_per_rank"] <= 0.55 * one and summary["trainer_restarts"] == 0


def test_a_run_with_collective_weight_sync_completes_and_records_the_bytes_of_each_sync(ray_cluster, tmp_path):
    """rollout.weight_sync=collective without GPUs: a gloo broadcast from the trainer to both rollout workers."""
    cfg = load_config(None, SMALL_RUN + ["rollout.weight_sync=collective", "warm_start.problems=0", "run.steps=2",
                                         "eval.every=0", "eval.problems=4"])
    summary = run(cfg, tmp_path / "out")
    steps = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert summary["steps"] == 2 and summary["sync_fallbacks"] == 0 and [s["sync_fallbacks"] for s in steps] == [0, 0]
    assert [s["sync_bytes"] for s in steps] == [_state_bytes(cfg)] * 2
    assert summary["sync_bytes"] == 2 * _state_bytes(cfg)


ISSUE_13_METRICS = {"reward_mean", "reward_std", "pass_rate", "response_length_mean", "response_length_max", "entropy",
                    "grad_norm", "lr", "clip_fraction", "kl", "batches", "verdict_pass", "verdict_fail",
                    "verdict_timeout", "verdict_memory", "verdict_error", "tokens_per_s", "train_tokens_per_s",
                    "verify_leaves_per_s"}


def test_tensorboard_holds_every_step_scalar_and_samples_show_passing_and_failing_rollouts(finished_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, run_dir, _ = finished_run
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(ISSUE_13_METRICS <= s.keys() for s in steps)
    assert all(s["grad_norm"] > 0 and s["lr"] == cfg.train.lr and s["response_length_max"] > 0 for s in steps)
    assert all(s["verdict_pass"] + s["verdict_fail"] + s["verdict_timeout"] + s["verdict_memory"]
               + s["verdict_error"] == s["leaves"] for s in steps)
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    numeric = {k for s in steps for k, v in s.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert numeric - {"step"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("reward_mean")] == [1, 2, 3]
    for step in (1, 2, 3):
        rows = [json.loads(x) for x in (run_dir / "samples" / f"step-{step:06d}.jsonl").read_text().splitlines()]
        assert {"pass", "fail"} <= {r["verdict"] for r in rows} and len(rows) <= 3 * cfg.track.samples
        assert all({"prompt", "completion", "verdict", "reward"} <= r.keys() and r["prompt"] for r in rows)
