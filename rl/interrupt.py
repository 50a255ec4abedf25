"""Graceful stop: SIGTERM (what Slurm and Kubernetes send before a kill) and SIGINT (Ctrl-C) ask a run to stop at
its next clean point, the end of a step (or of eval_before), where the driver writes a step checkpoint whatever
run.checkpoint_every says, and summary.json with `interrupted: true`; `branchrl run` then exits 143 (SIGTERM)
or 130 (SIGINT), and `branchrl run --resume RUN_DIR` finishes the run. During an SFT (the warm start, `train
--from-data`) the clean point is the end of an epoch: the SFT ends there, with nothing saved and no checkpoint to
resume from, and the command exits the same way. A second signal stops at once (KeyboardInterrupt), without a
checkpoint.

The handlers are installed by the driver once Ray is up (ray.init replaces the SIGTERM handler with its own
exit) and removed when the roles go down. Only the driver process is handled: it is the one a scheduler
signals, and the one that owns the run directory. Deliberately not here: stopping mid-step (a step's update
is finished and synced first, so the checkpoint is a state the run really passed through).
"""

from __future__ import annotations

import signal
import sys
import threading

EXIT_CODES = {"SIGTERM": 128 + signal.SIGTERM, "SIGINT": 128 + signal.SIGINT}   # 143, 130: the shells' codes
_state: dict = {"received": None, "previous": {}}


class Interrupted(Exception):
    """Raised at a clean point after a stop signal; step: the last finished step (its checkpoint is written), or
    warm_start: (epochs done, epochs planned) when the warm start was stopped, before any step or checkpoint."""

    def __init__(self, signal_name: str, step: int, eval_before: float | None,
                 warm_start: tuple[int, int] | None = None):
        where = f"in the warm start after epoch {warm_start[0]}/{warm_start[1]}" if warm_start else f"after step {step}"
        super().__init__(f"{signal_name} received; stopped {where}")
        self.signal_name, self.step, self.eval_before, self.warm_start = signal_name, step, eval_before, warm_start


def install() -> None:
    """Catch SIGTERM and SIGINT from now on (main thread only: elsewhere Python cannot set handlers)."""
    _state["received"] = None
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        _state["previous"][sig] = signal.signal(sig, _handle)


def restore() -> None:
    """Put back the handlers `install` replaced."""
    for sig, handler in _state["previous"].items():
        signal.signal(sig, handler)
    _state["previous"] = {}


def _handle(signum, frame) -> None:
    if _state["received"]:
        raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping now, without a checkpoint")
    _state["received"] = signal.Signals(signum).name
    print(f"[branchrl] {_state['received']} received: stopping at the end of this step, with a "
          f"checkpoint, or of this SFT epoch (send it again to stop at once)", file=sys.stderr, flush=True)


def requested() -> str | None:
    """The name of the stop signal received since `install`, or None."""
    return _state["received"]


def check(step: int, eval_before: float) -> None:
    """At a clean point whose checkpoint is written: stop if asked to."""
    if _state["received"]:
        raise Interrupted(_state["received"], step, eval_before)


def exit_code(summary: dict) -> int:
    """`branchrl run`'s exit code for a run's summary: 0, or the stop signal's 143 / 130."""
    return EXIT_CODES[summary["signal"]] if summary.get("interrupted") else 0
