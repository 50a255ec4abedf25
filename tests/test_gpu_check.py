"""bench/gpu_check.sh --cpu-smoke: every part of the GPU check runs on tiny shapes on CPU and lands in one table,
so the script a GPU machine runs unedited cannot rot."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_smoke_runs_every_part_into_one_table():
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--cpu-smoke"], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[-1].startswith("| ") and sum(line.startswith("| part |") for line in lines) == 1   # one table
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines if line.startswith("| ")][1:]
    parts = {row[0] for row in rows}
    assert {"gpu tests", "engine", "fork", "trainer", "mismatch"} <= parts, rows
    assert not any(row[1] in ("FAILED", "skipped", "missing") for row in rows), rows
    trainer = [row for row in rows if row[0] == "trainer"]
    assert [row[1].endswith(f"ac {ac}") for row, ac in zip(trainer, ("false", "true"))] == [True, True]
    assert all("tok/s" in row[2] and "peak" in row[2] for row in trainer)
    assert any("rollout mean" in row[2] and "recompute mean" in row[2] for row in rows if row[0] == "mismatch")
    engine = [row for row in rows if row[0] == "engine"]
    assert {"eager", "graph"} <= {row[1].split()[-1] for row in engine}, engine   # both decode modes ran
    assert all("host in situ" in row[2] and "KV moved" in row[2] for row in engine), engine
    assert any("skipped" in row[2] or "passed" in row[2] for row in rows if row[0] == "gpu tests")
