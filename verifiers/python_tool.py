"""The sandboxed Python tool: a policy's code cell runs in the warm sandbox and its output comes back as text.

`run_python_tool(code, history)` runs one cell as a whole program in the same sandbox and harness as the
`python_tests` verifier (warm_sandbox.py, harness/): bubblewrap with no network, no host files, a
cleared environment, its own PID namespace; rlimits on memory, processes, file size and open files;
CPU time inside and a wall-clock kill from outside. The harness runs it as an io case with `capture`,
so the program's stdout (capped in the sandbox to `Limits.output_bytes`, then to `max_chars` here) and
its error line come back in the nonce-signed report, never through a pipe the program could forge.

Interpreter state across calls: a rollout's earlier cells that ran without error are replayed, with
their output discarded, before the new cell, in a fresh sandboxed process (`history`). So variables
and functions defined earlier exist, each call is isolated and deterministic, and nothing of a
rollout lives between calls (no process to leak, nothing to clean); the cost is re-running earlier
cells, which is small for tool cells and bounded by the caller's turn limit.

Everything the program does is an observation: `ToolOutput.status` is ok | error (it raised or exited
non-zero) | timeout | memory | crash (it ended the harness, e.g. killed it) | unavailable (the
sandbox could not start: our problem, counted by the caller). Nothing here raises for what the code does.
Deliberately not here: parsing a call out of the policy's text and formatting the observation (the
env's), scheduling calls (the sampler's).
"""

import secrets
import time
from dataclasses import dataclass
from typing import Sequence

from .python_tests import _frame, _harness_limits, _parse_report
from .sandbox import Limits
from .warm_sandbox import SANDBOXES, SandboxUnavailable

VERSION = "python_tool-1"
DEFAULT_TIMEOUT_S = 3.0
MAX_OUTPUT_CHARS = 400  # of stdout kept for the observation (the sandbox already capped it in bytes)
HARNESS_GRACE_S = 2.0
LIMITS = Limits(output_bytes=16 * 1024)
STATUSES = ("ok", "error", "timeout", "memory", "crash", "unavailable")
# Earlier cells run first with their output dropped; one that raises is skipped (the caller passes only
# cells that ran cleanly, so this guards a cell whose outcome depended on something it cannot see again).
_REPLAY = """import contextlib as _cl, io as _io
_g = {{"__name__": "__main__", "__builtins__": __builtins__}}
for _c in {cells!r}:
    try:
        with _cl.redirect_stdout(_io.StringIO()):
            exec(compile(_c, "<earlier cell>", "exec"), _g)
    except BaseException:
        pass
exec(compile({code!r}, "<cell>", "exec"), _g)
"""


@dataclass(frozen=True)
class ToolOutput:
    status: str      # one of STATUSES
    output: str      # the program's stdout, capped; "" when it printed nothing
    error: str       # its exception line ("ZeroDivisionError: division by zero"), or why it was stopped
    seconds: float
    truncated: bool = False  # stdout was longer than max_chars

    def __post_init__(self) -> None:
        if self.status not in STATUSES:  # our bug, never the program's
            raise ValueError(f"tool status {self.status!r} is not one of {STATUSES}")


def program(code: str, history: Sequence[str] = ()) -> str:
    """The program the sandbox runs: `code` alone, or after the replayed `history` cells."""
    return _REPLAY.format(cells=list(history), code=code) if history else code


def run_python_tool(code: str, history: Sequence[str] = (), timeout_s: float = DEFAULT_TIMEOUT_S,
                    max_chars: int = MAX_OUTPUT_CHARS) -> ToolOutput:
    """Run one cell (after `history`) in the sandbox; its capped output and status. Never raises for the code."""
    start = time.monotonic()
    nonce = secrets.token_hex(16)
    limits = {**_harness_limits(timeout_s), "output_bytes": LIMITS.output_bytes}
    first = {"code": program(code, history), "limits": limits}
    job = {"tests": "", "io": [{"stdin": "", "stdout": ""}], "capture": True, "entry_point": None,
           "timeout_s": timeout_s, "nonce": nonce}
    try:
        run = SANDBOXES.run(_frame(first) + _frame(job), timeout_s + HARNESS_GRACE_S, LIMITS)
    except SandboxUnavailable as e:
        return ToolOutput("unavailable", "", str(e)[:300], time.monotonic() - start)
    report = None if run.report_truncated else _parse_report(run.report, nonce)
    seconds = time.monotonic() - start
    if report is None or not report["units"] or not isinstance(report["units"][0], dict):
        why = "time limit reached" if run.timed_out else "the program ended the sandbox's harness"
        return ToolOutput("timeout" if run.timed_out else "crash", "", why, seconds)
    unit = report["units"][0]
    out, error = str(unit.get("stdout", "")), str(unit.get("error", ""))
    status = "timeout" if unit.get("outcome") == "timeout" else "memory" if "MemoryError" in error else (
        "error" if error else "ok")
    if status == "timeout" and not error:
        error = "time limit reached"
    return ToolOutput(status, out[:max_chars], error, seconds, len(out) > max_chars)
