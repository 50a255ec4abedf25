"""SIGTERM / SIGINT to the driver of a real `branchrl run` (its own process and embedded Ray), with the default
run.checkpoint_every (0): it stops at the end of a step with a step checkpoint and summary.json saying
`interrupted: true`, exits 143 / 130 well within a minute, and `branchrl run --resume` finishes the run with
every sample id once. During a warm start, and in `branchrl train --from-data`'s SFT, it stops at the end of an
epoch instead, with nothing to resume."""

import json
import os
import queue
import re
import signal
import subprocess
import threading
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


def _driver(argv: list[str]) -> tuple[subprocess.Popen, "queue.Queue[str | None]"]:
    """A `branchrl` subprocess in its own session and embedded Ray; its stderr lines arrive on the queue (None at
    the end), read by a thread, so waiting for a line never blocks past a deadline."""
    driver = subprocess.Popen([BRANCHRL, *argv], env={**os.environ, "RAY_ADDRESS": ""}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def read():
        for line in driver.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return driver, lines


def _stop_at_epoch(driver, lines, phase: str, epoch: int, sig=signal.SIGTERM) -> tuple[list[str], float]:
    """Wait for the `phase epoch N/..` line, send sig, and collect every line until the driver exits (within 120
    s); returns the lines and the seconds from the signal to the exit."""
    seen, deadline = [], time.monotonic() + 600
    while time.monotonic() < deadline:
        line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
        assert line is not None, "".join(seen)[-3000:]
        seen.append(line)
        if re.search(rf"\] {phase} epoch +{epoch}/", line):
            break
    t0 = time.monotonic()
    os.kill(driver.pid, sig)
    driver.wait(timeout=120)
    while (line := lines.get(timeout=30)) is not None:
        seen.append(line)
    return seen, time.monotonic() - t0


def _epochs(lines: list[str], phase: str) -> list[tuple[int, int]]:
    return [(int(m[1]), int(m[2])) for m in (re.search(rf"\] {phase} epoch +(\d+)/(\d+) ", x) for x in lines) if m]


def _stopped_by_sigterm(driver, lines, phase: str) -> tuple[list[str], float, int]:
    """SIGTERM after the phase's epoch-3 line of 2000: exit 143 with every epoch line up to where it stopped.
    Returns the stderr lines, the seconds to exit and the epochs done."""
    err, seconds = _stop_at_epoch(driver, lines, phase, 3)
    text = "".join(err)
    assert driver.returncode == 143, text[-3000:]
    epochs = _epochs(err, phase)
    done = epochs[-1][0]
    # an epoch takes milliseconds: on a loaded machine the test may read the epoch-3 line some epochs late
    assert epochs == [(i, 2000) for i in range(1, done + 1)] and 3 <= done < 100, text[-3000:]
    return err, seconds, done


def test_sigterm_in_a_long_warm_start_stops_at_the_next_epoch_with_exit_143(tmp_path):
    """Every epoch prints its line; SIGTERM after epoch 3 of 2000 ends the warm start at a later epoch boundary: exit
    143, summary.json interrupted with the epochs done, no checkpoint, a last line that says so, and `--resume` of
    that dir refused in one line."""
    config, run_dir = tmp_path / "run.yaml", tmp_path / "out"
    dump_config(load_config(None, [*SMALL_RUN, "warm_start.epochs=2000"]), config)
    driver, lines = _driver(["run", str(config), "--out", str(run_dir)])
    err, seconds, done = _stopped_by_sigterm(driver, lines, "warm start")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["interrupted"], summary["signal"], summary["steps"], summary["eval_after"]) == (
        True, "SIGTERM", 0, None)
    assert (summary["warm_start_epochs_done"], summary["warm_start_epochs"]) == (done, 2000)
    assert not (run_dir / "checkpoints").exists()
    assert f"warm start interrupted after epoch {done}/2000" in err[-1] and "no RL checkpoint" in err[-1]
    assert seconds < 60
    resumed = subprocess.run([BRANCHRL, "run", "--resume", str(run_dir)], capture_output=True, text=True, timeout=60)
    assert resumed.returncode == 2 and "was stopped during its warm start (after epoch" in resumed.stderr
    print(f"SIGTERM after warm-start epoch 3: stopped after epoch {done}, exit 143 in {seconds:.1f}s")


@pytest.mark.slow   # 32 s here under load, most of it Ray's start and eval_before
def test_sigterm_in_train_from_data_stops_the_sft_at_the_next_epoch_with_exit_143(tmp_path):
    from test_from_data import SMALL, single_turn, stored, tool_row

    config, run_dir = tmp_path / "run.yaml", tmp_path / "out"
    dump_config(load_config(None, [*SMALL, "train.epochs=2000"]), config)
    data = stored(tmp_path, [tool_row(347, 29), tool_row(518, 76), single_turn(12, 34), single_turn(56, 78)])
    driver, lines = _driver(["train", str(config), "--from-data", str(data), "--out", str(run_dir)])
    err, seconds, done = _stopped_by_sigterm(driver, lines, "SFT")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["interrupted"], summary["signal"], summary["epochs_done"], summary["eval_after"]) == (
        True, "SIGTERM", done, None)
    assert 0 <= summary["eval_before"] <= 1 and summary["trained_tokens"] > 0 and summary["rows"] == 4
    assert not (run_dir / "checkpoints" / "final").exists()
    assert f"SFT interrupted after epoch {done}/2000" in err[-1] and seconds < 60
    print(f"train --from-data: SIGTERM after epoch 3: stopped after epoch {done}, exit 143 in {seconds:.1f}s")
