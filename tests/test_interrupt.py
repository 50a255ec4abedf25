"""SIGTERM / SIGINT to the driver of a real `branchrl run` (its own process and embedded Ray), with the default
run.checkpoint_every (0): it stops at the end of a step with a step checkpoint and summary.json saying
`interrupted: true`, exits 143 / 130 well within a minute, and `branchrl run --resume` finishes the run with
every sample id once."""

import json
import os
import signal
import subprocess
import time

import pytest
from test_resume import BRANCHRL, _ids, _steps
from test_run import SMALL_RUN

from branchrl.config import dump_config, load_config


@pytest.mark.parametrize("sig, code, at, steps, verbose", [(signal.SIGTERM, 143, 6, 8, []),
                                                            (signal.SIGINT, 130, 1, 3, ["--verbose"])])
def test_a_signalled_run_stops_cleanly_and_resumes_to_the_end(tmp_path, sig, code, at, steps, verbose):
    """The resume loads the checkpoint's HF weights in every actor: their progress bars show only with --verbose."""
    config, run_dir = tmp_path / "run.yaml", tmp_path / "out"
    cfg = load_config(None, [*SMALL_RUN, f"run.steps={steps}", "eval.every=0"])
    assert cfg.run.checkpoint_every == 0   # the default: a stop must not need a key
    dump_config(cfg, config)
    env = {**os.environ, "RAY_ADDRESS": ""}
    driver = subprocess.Popen([BRANCHRL, "run", str(config), "--out", str(run_dir)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 600
    while len(_steps(run_dir)) < at and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert driver.poll() is None, driver.stderr.read()[-2000:]
    t0 = time.monotonic()
    os.kill(driver.pid, sig)
    err = driver.communicate(timeout=120)[1]
    seconds = time.monotonic() - t0
    assert driver.returncode == code, err[-3000:]
    assert seconds < 60
    summary = json.loads((run_dir / "summary.json").read_text())
    stopped = summary["steps"]
    assert summary["interrupted"] is True and summary["signal"] == sig.name and summary["eval_after"] is None
    assert at <= stopped < steps and _steps(run_dir) == list(range(1, stopped + 1))
    assert [p.name for p in (run_dir / "checkpoints").glob("step-*")] == [f"step-{stopped:06d}"]
    assert "--resume" in err.splitlines()[-1]
    before = _ids(run_dir)

    done = subprocess.run([BRANCHRL, "run", "--resume", str(run_dir), *verbose], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert ("Loading weights" in done.stderr) == bool(verbose), done.stderr[-3000:]
    assert verbose or "WARNING" not in done.stderr   # Ray's start-up warnings too
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["interrupted"], summary["steps"], summary["resumed_from_step"]) == (False, steps, stopped)
    assert _steps(run_dir) == list(range(1, steps + 1))
    after = _ids(run_dir)
    assert len(after) == len(set(after)) and set(before) <= set(after) and summary["verified_samples"] == len(after)
    print(f"{sig.name} after step {stopped}: exit {code} in {seconds:.1f}s; resume exit 0")
