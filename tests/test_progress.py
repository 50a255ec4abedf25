"""Console progress: one flushed line per RL step with step, tokens/s, pass rate and the rest."""

import io

from branchrl.progress import Progress


def record(**change):
    base = {"step": 3, "pass_rate": 0.4567, "solved_rate": 0.75, "leaves": 512, "forks": 256,
            "tokens_per_s": 12345.0, "verified_samples": 90, "loss": 0.12345, "rollout_train_flop_ratio": 7.25,
            "step_seconds": 4.56}
    return {**base, **change}


def test_step_line_holds_step_throughput_and_pass_rate():
    out = io.StringIO()
    Progress(steps=40, stream=out).step(record())
    line = out.getvalue()
    assert line.startswith("[branchrl ") and line.endswith("\n") and line.count("\n") == 1
    for part in ("step  3/40", "pass 0.457", "solved 0.75", "leaves 512 (256 forks)", "12.3k tok/s",
                 "verified 90", "loss 0.123", "flop ratio 7.2", "4.6s"):
        assert part in line, (part, line)
    assert "eval" not in line and "tool" not in line


def test_a_step_with_tool_calls_shows_them():
    out = io.StringIO()
    Progress(steps=40, stream=out).step(record(tool_calls=131, tool_seconds=3.25, appended_tokens=917,
                                               tool_unavailable=0))
    assert "tool calls 131 (3.2s sandbox, 917 tokens appended)" in out.getvalue()
    out = io.StringIO()
    Progress(steps=40, stream=out).step(record(tool_calls=2, tool_seconds=0.1, appended_tokens=9, tool_unavailable=1))
    assert "9 tokens appended, 1 unavailable)" in out.getvalue()


def test_missing_loss_and_ratio_and_an_eval():
    out = io.StringIO()
    progress = Progress(steps=5, stream=out)
    progress.step(record(step=5, loss=None, rollout_train_flop_ratio=None, eval=0.5))
    progress.note("done")
    first, second = out.getvalue().splitlines()
    assert "step 5/5" in first and "loss -" in first and "flop ratio -" in first and first.endswith("eval 0.500")
    assert second.endswith("] done")


def test_eta_counts_the_mean_pace_since_the_first_step_and_ends_with_the_run():
    now = [100.0]
    out = io.StringIO()
    progress = Progress(steps=10, stream=out, clock=lambda: now[0])
    progress.step(record(step=1, step_seconds=7.0))   # one step seen: its own time, 9 to go
    now[0] = 120.0
    progress.step(record(step=3, step_seconds=9.0))   # 20 s for 2 steps since step 1: 10 s a step, 7 to go
    now[0] = 2000.0
    progress.step(record(step=9, step_seconds=9.0))   # 1900 s / 8 steps x 1 to go
    now[0] = 2001.0
    progress.step(record(step=10))
    lines = out.getvalue().splitlines()
    etas = [line.split("  eta ")[1] if "  eta " in line else None for line in lines]
    assert etas == ["1m03s", "1m10s", "3m58s", None]


def test_sft_epoch_line_holds_epoch_loss_throughput_elapsed_and_eta():
    out = io.StringIO()
    progress = Progress(steps=40, stream=out)
    progress.epoch("warm start", 3, 40, loss=1.23456, tokens_per_s=2345.0, elapsed=30.0)
    progress.epoch("warm start", 40, 40, loss=0.5, tokens_per_s=2345.0, elapsed=400.0)
    first, last = out.getvalue().splitlines()
    for part in ("warm start epoch  3/40", "loss 1.235", "train 2.3k tok/s", "elapsed 30s", "eta 6m10s"):
        assert part in first, (part, first)
    assert "warm start epoch 40/40" in last and "eta" not in last
