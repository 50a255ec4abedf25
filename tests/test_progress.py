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
    assert "eval" not in line


def test_missing_loss_and_ratio_and_an_eval():
    out = io.StringIO()
    progress = Progress(steps=5, stream=out)
    progress.step(record(step=5, loss=None, rollout_train_flop_ratio=None, eval=0.5))
    progress.note("done")
    first, second = out.getvalue().splitlines()
    assert "step 5/5" in first and "loss -" in first and "flop ratio -" in first and first.endswith("eval 0.500")
    assert second.endswith("] done")
