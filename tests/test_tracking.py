"""Tracking: the per-step scalars as TensorBoard events (read back with TensorBoard's own reader), W&B in offline
mode, the statistics read off the leaves (by hand), sample rollouts per step, and the console warnings."""

import io
import json
import time

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from branchrl.config import load_config
from branchrl.progress import Progress
from branchrl.records import Leaf
from branchrl.tracking import Tracker, rollout_stats, scalars, write_samples
from branchrl.tree import Tree
from branchrl.verifiers.result import Result


def leaves_of(verdicts: list[str], lengths: list[int]) -> tuple[list[Leaf], list[Tree]]:
    """One tree per leaf: a single span of `length` tokens, entropies 0.5 and 1.5 alternating."""
    leaves, trees = [], []
    for i, (verdict, n) in enumerate(zip(verdicts, lengths)):
        tree = Tree(f"p{i}", [65, 66], 0, tree_id=f"p{i}#s1#0")
        node = tree.add_child(0)
        tree.nodes[node].tokens = list(range(70, 70 + n))
        tree.nodes[node].entropies = [0.5 if k % 2 == 0 else 1.5 for k in range(n)]
        tree.nodes[node].finish = "eos"
        leaf = Leaf(tree, node, tree.nodes[node].tokens, f"text {i}", {"answer": "7"})
        leaf.result = Result(verdict, 1.0 if verdict == "pass" else 0.0, 0.01, f"{verdict} details")
        leaves.append(leaf)
        trees.append(tree)
    return leaves, trees


def test_rollout_stats_by_hand():
    leaves, trees = leaves_of(["pass", "fail", "error", "pass"], [2, 4, 6, 8])
    stats = rollout_stats(leaves, trees)
    assert stats["reward_mean"] == 0.5 and stats["reward_std"] == 0.5   # rewards 1, 0, 0, 1
    assert (stats["response_length_mean"], stats["response_length_max"]) == (5.0, 8)
    assert stats["entropy"] == 1.0
    assert [stats[f"verdict_{v}"] for v in ("pass", "fail", "timeout", "memory", "error")] == [2, 1, 0, 0, 1]


class CharTokenizer:
    def decode(self, ids):
        return "".join(map(chr, ids))


def test_samples_hold_passing_failing_and_error_rollouts_with_what_the_policy_saw(tmp_path):
    leaves, _ = leaves_of(["pass", "fail", "error", "pass", "fail", "timeout"], [1] * 6)
    path = write_samples(tmp_path, 12, leaves, CharTokenizer(), n=1)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert path.name == "step-000012.jsonl"
    assert [(r["problem_id"], r["verdict"], r["reward"]) for r in rows] == [("p0", "pass", 1.0), ("p1", "fail", 0.0),
                                                                            ("p2", "error", 0.0)]
    assert rows[0]["prompt"] == "AB" and rows[0]["completion"] == "text 0" and rows[2]["details"] == "error details"
    assert write_samples(tmp_path, 13, leaves, CharTokenizer(), n=0) is None


def record(step: int, **change) -> dict:
    base = {"step": step, "pass_rate": 0.25, "solved_rate": 0.5, "leaves": 8, "forks": 4, "tokens_per_s": 1000.0,
            "verified_samples": 2, "loss": 0.5, "rollout_train_flop_ratio": 3.0, "step_seconds": 1.0,
            "verdict_pass": 2, "verdict_error": 0, "grad_norm": 1.5, "lr": 1e-3, "kl": None, "done": True}
    return {**base, **change}


def test_every_numeric_metric_reaches_tensorboard_and_warnings_are_loud(tmp_path):
    out = io.StringIO()
    cfg = load_config(None, ["track.warn_after=2", "run.steps=5"])
    with Tracker(cfg, tmp_path, Progress(5, stream=out)) as track:
        track.step(record(1))
        track.step(record(2, verdict_pass=0, pass_rate=0.0))
        track.step(record(3, verdict_pass=0, pass_rate=0.0, verdict_error=3))
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert tags == set(scalars(record(1))) and "kl" not in tags and "done" not in tags and "step" not in tags
    assert [(e.step, e.value) for e in events.Scalars("pass_rate")] == [(1, 0.25), (2, 0.0), (3, 0.0)]
    assert events.Scalars("grad_norm")[0].value == 1.5
    warnings = [line for line in out.getvalue().splitlines() if "WARNING" in line]
    assert len(warnings) == 2
    assert "no rollout has passed for 2 steps (step 3)" in warnings[0]
    assert "3 verifier errors at step 3" in warnings[1] and "step-000003.jsonl" in warnings[1]


def test_wandb_offline_logs_every_scalar_under_the_run_dir(tmp_path):
    pytest.importorskip("wandb")
    cfg = load_config(None, ["track.wandb=true", "track.wandb_mode=offline", "track.tensorboard=false"])
    with Tracker(cfg, tmp_path, Progress(3, stream=io.StringIO())) as track:
        track.step(record(1))
        track.step(record(2, grad_norm=2.5))
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    keys = [key.encode() for key in scalars(record(1))] + [b"2.5"]
    deadline = time.monotonic() + 20
    while True:   # wandb's service process may still be writing the file when finish() returns
        logged = b"".join(f.read_bytes() for f in runs[0].glob("*.wandb"))   # protobuf: keys and JSON values raw
        if all(key in logged for key in keys) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert [key for key in keys if key not in logged] == []
