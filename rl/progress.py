"""Console progress for a run: one line per phase note, per SFT epoch (warm start, `train --from-data`) and per RL
step (step, tokens/s, pass rate, ..., ETA).

Plain lines on stderr, flushed at once, so they read well in a terminal, a log file and `ray job logs`.
It only formats; the numbers come from the loop's metrics records.
"""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, steps: int, stream=None, clock=time.perf_counter):
        self.steps, self.stream, self.clock, self.t0 = steps, stream or sys.stderr, clock, clock()
        self.first: tuple[int, float] | None = None   # (step, when it ended): the ETA's rate counts from there

    def _emit(self, text: str) -> None:
        self.stream.write(f"[branchrl {self.clock() - self.t0:6.1f}s] {text}\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        self._emit(text)

    def step(self, r: dict) -> None:
        loss = "-" if r["loss"] is None else f"{r['loss']:.3f}"
        ratio = "-" if r["rollout_train_flop_ratio"] is None else f"{r['rollout_train_flop_ratio']:.1f}"
        line = (f"step {r['step']:>{len(str(self.steps))}}/{self.steps}  pass {r['pass_rate']:.3f}  "
                f"solved {r['solved_rate']:.2f}  leaves {r['leaves']} ({r['forks']} forks)  "
                f"{r['tokens_per_s'] / 1000:.1f}k tok/s  verified {r['verified_samples']}  loss {loss}  "
                f"flop ratio {ratio}  {r['step_seconds']:.1f}s")
        eta = self.eta(r["step"], r["step_seconds"])
        if eta is not None:
            line += f"  eta {duration(eta)}"
        if r.get("tool_calls"):
            line += tool_note(r)
        if "eval" in r:
            line += f"  eval {r['eval']:.3f}"
        self._emit(line)

    def epoch(self, phase: str, epoch: int, epochs: int, loss: float, tokens_per_s: float, elapsed: float) -> None:
        """An SFT epoch's line: phase ("warm start", "SFT"), epoch i/E, its mean loss, tokens through forward and
        backward per second (as a step's train_tokens_per_s), time since the SFT began and an ETA at that pace."""
        line = (f"{phase} epoch {epoch:>{len(str(epochs))}}/{epochs}  loss {loss:.3f}  "
                f"train {tokens_per_s / 1000:.1f}k tok/s  elapsed {duration(elapsed)}")
        if epoch < epochs:
            line += f"  eta {duration(elapsed / epoch * (epochs - epoch))}"
        self._emit(line)

    def eta(self, step: int, step_seconds: float) -> float | None:
        """Seconds until the last step ends, at the mean pace since the first step this process saw (that step's
        own time until there is a second); None after the last step. Final eval and checkpoint not included."""
        now = self.clock()
        if self.first is None:
            self.first = (step, now)
        if step >= self.steps:
            return None
        first_step, first_end = self.first
        per_step = (now - first_end) / (step - first_step) if step > first_step else step_seconds
        return per_step * (self.steps - step)


def tool_note(counts: dict) -> str:
    """A multi-turn env's tool counts (a step's or batch's record, or a summary's totals), for a progress line."""
    unavailable = counts["tool_unavailable"]
    return (f"  tool calls {counts['tool_calls']} ({counts['tool_seconds']:.1f}s sandbox, {counts['appended_tokens']} "
            f"tokens appended{f', {unavailable} unavailable' if unavailable else ''})")


def duration(seconds: float) -> str:
    """4.2 -> '4s', 125 -> '2m05s', 7300 -> '2h01m'."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
