"""Console progress for a run: one line per phase note and per RL step (step, tokens/s, pass rate, ...).

Plain lines on stderr, flushed at once, so they read well in a terminal, a log file and `ray job logs`.
It only formats; the numbers come from the loop's metrics records.
"""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, steps: int, stream=None):
        self.steps, self.stream, self.t0 = steps, stream or sys.stderr, time.perf_counter()

    def _emit(self, text: str) -> None:
        self.stream.write(f"[branchrl {time.perf_counter() - self.t0:6.1f}s] {text}\n")
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
        if "eval" in r:
            line += f"  eval {r['eval']:.3f}"
        self._emit(line)
