"""Rollouts ahead of the trainer with a staleness bound, and actors killed mid-run (real SIGKILLs)."""

import json
import os
import signal
import threading
import time
from types import SimpleNamespace

from test_resume import _ids
from test_run import SMALL_RUN

from branchrl.config import load_config
from branchrl.context import Context
from branchrl.dispatch import Batch, Faults, collect, submit, verified
from branchrl.envs import load_env
from branchrl.launch import launch
from branchrl.loop import gather, run, sync
from branchrl.models import load_tokenizer
from branchrl.sync.weight_sync import Published
from branchrl.tree import Tree
from branchrl.verifiers.result import Result


def _steps(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_async_rollouts_train_on_batches_at_most_max_staleness_versions_old(ray_cluster, tmp_path):
    summary = run(load_config(None, [*SMALL_RUN, "rollout.max_staleness=1", "run.steps=4", "eval.every=0"]),
                  tmp_path / "out")
    steps = _steps(tmp_path / "out")
    # step s trains on the batch sent at step s-1, right after the sync of version pv[s-2], and its update
    # starts from pv[s-1]: the lag is the updates in between (0 or 1; an empty step trains nothing)
    pv = [0] + [s["policy_version"] for s in steps]
    assert [s["staleness"] for s in steps] == [0] + [pv[s - 1] - pv[s - 2] for s in range(2, 5)]
    assert steps[1]["staleness"] == 1  # step 1 trained, so step 2 really trained one version behind
    assert max(s["staleness"] for s in steps) <= 1 and all(s["stale_batches"] == 0 for s in steps)
    import datasets

    rows = datasets.load_dataset("parquet", data_dir=str(tmp_path / "out" / "data"), split="train")
    for step, version in zip(rows["step"], rows["policy_version"]):
        assert pv[step - 1] - version <= 1
    assert summary["unused_tokens"] > 0  # the batch in flight when the run ended
    assert 0 <= summary["trainer_idle_fraction"] < 1 and 0 <= summary["rollout_idle_fraction"] < 1


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _ours(pid: int) -> bool:
    """A descendant of this test process: our embedded Ray's workers, not another Ray on the machine."""
    while pid > 1:
        pid = _parent(pid)
        if pid == os.getpid():
            return True
    return False


def _killer(title: str, stop: threading.Event, killed: list):
    """SIGKILL the first of our processes titled `title` (Ray names a busy actor process ray::Class.method)."""
    while not stop.is_set() and not killed:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().split(b"\0")[0].decode(errors="replace")
                if cmd.startswith(title) and _ours(int(pid)):
                    os.kill(int(pid), signal.SIGKILL)
                    killed.append(int(pid))
                    return
            except OSError:  # gone meanwhile
                continue
        time.sleep(0.005)


def test_a_rollout_worker_killed_mid_rollout_is_restarted_and_the_run_completes(ray_cluster, tmp_path):
    stop, killed = threading.Event(), []
    thread = threading.Thread(target=_killer, args=("ray::RolloutWorker.rollout", stop, killed), daemon=True)
    thread.start()
    try:
        summary = run(load_config(None, [*SMALL_RUN, "run.steps=2", "eval.every=0"]), tmp_path / "out")
    finally:
        stop.set()
    assert killed, "no rollout was ever seen running"
    assert summary["rollout_restarts"] >= 1 and summary["steps"] == 2
    steps = _steps(tmp_path / "out")
    import datasets

    rows = datasets.load_dataset("parquet", data_dir=str(tmp_path / "out" / "data"), split="train")
    assert len(rows) == sum(s["verified_samples"] for s in steps) == summary["verified_samples"]
    ids = [f"{t}/{b}" for t, b in zip(rows["tree_id"], rows["branch_path"])]
    assert len(set(ids)) == len(ids)


def test_a_trainer_killed_mid_run_is_restarted_and_the_run_replays_from_its_last_checkpoint(ray_cluster, tmp_path):
    """Two fsdp trainers; one is SIGKILLed once step 1 is done (busy or between calls: its death shows at the
    group's next call). The group restarts, reloads the step-0 checkpoint and steps 1.. run again as attempt 1:
    the run completes, every sample stored before the kill is still there, and no sample id is stored twice."""
    run_dir, stop, killed, before = tmp_path / "out", threading.Event(), [], []

    def kill_in_step_two():
        while not stop.is_set() and len(_lines(run_dir / "metrics.jsonl")) < 1:
            time.sleep(0.05)
        _killer("ray::Trainer", stop, killed)
        before.extend(_ids(run_dir))

    thread = threading.Thread(target=kill_in_step_two, daemon=True)
    thread.start()
    try:
        summary = run(load_config(None, [*SMALL_RUN, "run.steps=4", "run.checkpoint_every=2", "eval.every=0",
                                         "train.workers=2", "train.cpus=0.5"]), run_dir)
    finally:
        stop.set()
        thread.join()
    assert killed and summary["trainer_restarts"] == 1
    resumes = [json.loads(line) for line in _lines(run_dir / "resumes.jsonl")]
    assert [(r["attempt"], r["from_step"], r["why"]) for r in resumes] == [(1, 0, "trainer restart")]
    assert [s["step"] for s in _steps(run_dir)] == [1, 2, 3, 4] and summary["attempt"] == 1
    after = _ids(run_dir)
    assert len(after) == len(set(after)), "a sample id is stored twice"
    assert before and set(before) <= set(after), "a sample stored before the kill is gone"
    assert summary["verified_samples"] == len(after)
    assert all("@a" not in i or "@a1/" in i for i in after)   # attempt 0's (some stored after the snapshot) or 1's
    assert any("@a1/" in i for i in after)


def _lines(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_a_shard_sent_again_after_its_worker_died_gives_the_same_trees(ray_cluster):
    cfg = load_config(None, [*SMALL_RUN, "rollout.workers=2", "rollout.prompts_per_step=32"])
    roles = launch(cfg)
    try:
        env, tokenizer = load_env("echo"), load_tokenizer(cfg.model)
        sync(roles)
        problems = env.train_problems(32, seed=3)
        prompts = [(p.id, tokenizer.encode(p.prompt)) for p in problems]
        clean, _ = collect(roles, submit(roles, problems, prompts, key=7))
        pid = ray_cluster.get(roles.rollout[0].__ray_call__.remote(lambda self: os.getpid()))
        batch = submit(roles, problems, prompts, key=7)
        os.kill(pid, signal.SIGKILL)  # the batch is queued or running on it: either way in flight
        again, _ = collect(roles, batch)
        assert (roles.faults.rollout_resent, roles.faults.rollout_restarts) == (1, 1)
        assert [t.completion_ids(leaf) for t in again for leaf in t.leaves()] == \
               [t.completion_ids(leaf) for t in clean for leaf in t.leaves()]
        assert {t.policy_version for t in again} == {roles.published.version}
    finally:
        roles.shutdown()


def test_a_verifier_that_dies_on_one_record_gives_it_an_error_verdict_and_checks_the_rest(ray_cluster):
    ray = ray_cluster

    class Dying:  # defined here so Ray ships it by value (workers cannot import test modules)
        """A verifier stand-in whose process dies on any record marked `die` (a real process death)."""

        def verify_batch(self, records):
            if any(r.get("die") for r in records):
                os._exit(1)
            return [Result("pass", 1.0, 0.0, "") for _ in records], 0.0

    actor = ray.remote(Dying).options(max_restarts=-1).remote()
    records = [{"n": 0}, {"n": 1, "die": True}, {"n": 2}]
    faults = Faults()
    results = verified(actor, records, actor.verify_batch.remote(records), faults)
    assert [r.verdict for r in results] == ["pass", "error", "pass"]
    assert "died" in results[1].details
    assert (faults.verifier_resent, faults.verifier_errors) == (2, 1)
    ray.kill(actor)


class OldBatches:
    """A feed whose batches all come from policy version 3 (the real loop cannot fall that far behind)."""

    def take(self):
        tree = Tree("p", [1, 2], policy_version=3, tree_id="p#0")
        tree.nodes[tree.add_child(0)].tokens += [5, 6, 7]
        return Batch(1, [], [], False), [tree], 0.1

    def top_up(self):
        pass


def test_a_batch_more_versions_behind_than_the_bound_is_dropped_unverified_and_counted():
    cfg = load_config(None, ["rollout.max_staleness=1", "rollout.max_batches_per_step=2"])
    ctx = Context(cfg, env=None, tokenizer=None, roles=SimpleNamespace(published=Published(5, "", 0, [])), ledger=None,
                  run_dir=None, progress=None)
    got = gather(ctx, OldBatches())  # env=None: verifying would fail, so nothing stale reaches it
    assert (got.batches, got.stale_batches, got.stale_tokens, got.trees) == (2, 2, 6, [])
