"""SIGKILL the driver of a real `branchrl run` (its own process and embedded Ray), then `branchrl run --resume`:
the run completes, and the data set keeps every sample stored before the kill, with no id twice. The synchronous
case runs two fsdp trainers and resumes with one (the sharded checkpoint is resharded on load)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_run import SMALL_RUN

from branchrl.config import dump_config, load_config

BRANCHRL = str(Path(sys.executable).with_name("branchrl"))


def _ids(run_dir: Path) -> list[str]:
    """Every stored sample id, read straight from the shards (what a user's loader would see)."""
    return [i for shard in sorted((run_dir / "data").glob("*.parquet"))
            for i in pq.read_table(shard, columns=["sample_id"]).column("sample_id").to_pylist()]


def _steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("staleness, workers, reshape", [(0, 2, ["train.workers=1"]), (1, 1, [])])
def test_a_driver_killed_mid_run_resumes_and_no_stored_sample_is_lost_or_repeated(tmp_path, staleness, workers,
                                                                                  reshape):
    config, run_dir = tmp_path / "run.yaml", tmp_path / "out"
    dump_config(load_config(None, [*SMALL_RUN, "run.steps=6", "run.checkpoint_every=2", "eval.every=0",
                                   f"rollout.max_staleness={staleness}", f"train.workers={workers}",
                                   "train.cpus=0.5"]), config)
    env = {**os.environ, "RAY_ADDRESS": ""}  # its own embedded Ray, not a cluster another test left behind
    driver = subprocess.Popen([BRANCHRL, "run", str(config), "--out", str(run_dir)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 600
    while len(_steps(run_dir)) < 3 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
    os.kill(driver.pid, signal.SIGKILL)  # after step 3: the last checkpoint is step 2's, step 3's shard exists
    driver.wait()
    before = _ids(run_dir)
    assert before and not (run_dir / "summary.json").exists()

    done = subprocess.run([BRANCHRL, "run", "--resume", str(run_dir), *reshape], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["steps"], summary["attempt"], summary["resumed_from_step"]) == (6, 1, 2)
    assert load_config(run_dir / "config.yaml").train.workers == (1 if reshape else workers)
    assert json.loads((run_dir / "resumes.jsonl").read_text())["overrides"] == reshape
    assert summary["train_state_bytes_per_rank"] > 0
    assert _steps(run_dir) == [1, 2, 3, 4, 5, 6]
    assert [json.loads(x)["step"] for x in (run_dir / "metrics.attempt0.jsonl").read_text().splitlines()][0] == 3
    after = _ids(run_dir)
    assert len(after) == len(set(after)), "a sample id is stored twice"
    assert set(before) <= set(after), "a sample stored before the kill is gone"
    assert summary["verified_samples"] == len(after)
    redone = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()][2:]
    assert sum("@a1/" in i for i in after) == sum(s["verified_samples"] for s in redone)  # steps 3.. as attempt 1
