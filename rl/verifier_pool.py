"""The verifier role: checks leaf records in its own process, off the trainer's path, and (with
`rollout.tool_pool: verifiers`) runs the rollouts' sandboxed tool calls.

A plain class (Ray wraps it in `branchrl.launch`; several run side by side). Records are in the
`branchrl verify` format; each comes back as a `Result`. A crash inside a verifier is a
counted `error` verdict, never a silent 0.

Tool calls arrive in batches (`run_tools`: the calls one rollout worker's rows made in one decode step)
and run on this actor's own thread pool of `tool_workers`, each in a warm sandbox of this process
(`warm_sandbox.SANDBOXES`, shared with `python_tests`: started on first use, reused for the actor's
life). Launch puts `run_tools` and `stats` in their own Ray concurrency group (`TOOLS_GROUP`), so
tool batches and verification run side by side and neither waits for the other; verification itself
stays one batch at a time, as before. Deliberately not here: choosing an actor for a call and
turning a lost call into an observation (the rollout side, `rollout/remote_tools.py`).
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from branchrl.verifiers import verify
from branchrl.verifiers.python_tool import ToolOutput
from branchrl.verifiers.registry import configure
from branchrl.verifiers.result import Result
from branchrl.verifiers.tools import run_tool
from branchrl.verifiers.warm_sandbox import SANDBOXES

TOOLS_GROUP = "tools"   # the Ray concurrency group of run_tools and stats (launch.py sizes it)


class VerifierWorker:
    def __init__(self, settings: dict[str, dict] | None = None, tool_workers: int = 0):
        """settings: `verify.settings`, per-verifier process settings (e.g. {"math": {"workers": 2}}).
        tool_workers: tool calls run at once (`rollout.tool_workers`); 0 = this actor serves no tool calls."""
        for name, kwargs in (settings or {}).items():
            configure(name, **kwargs)
        self.tool_workers = tool_workers
        self._tools = ThreadPoolExecutor(tool_workers, thread_name_prefix="tool") if tool_workers else None
        self._lock = threading.Lock()
        self._tool_calls = self._tool_batches = self._running = 0

    def verify_batch(self, records: list[dict]) -> tuple[list[Result], float]:
        """Returns one Result (verdict, score, seconds, details) per record, and the busy seconds."""
        t0 = time.perf_counter()
        return [verify(r) for r in records], time.perf_counter() - t0

    def run_tools(self, requests: list[dict]) -> list[ToolOutput]:
        """One ToolOutput per tool request (`branchrl.verifiers.tools.run_tool`, which never raises for what the
        code does), in order; the batch's calls run at once, up to tool_workers at a time."""
        if self._tools is None:
            why = "this verifier actor serves no tool calls (started with tool_workers=0)"
            return [ToolOutput("unavailable", "", why, 0.0) for _ in requests]
        self._count(running=len(requests))
        try:
            return list(self._tools.map(run_tool, requests))
        finally:
            self._count(running=-len(requests), calls=len(requests), batches=1)

    def stats(self) -> dict:
        """This process's pid, the tool calls and batches it served, calls running now, and its warm sandboxes."""
        with self._lock:
            return {"pid": os.getpid(), "tool_calls": self._tool_calls, "tool_batches": self._tool_batches,
                    "tool_calls_running": self._running, "sandboxes": len(SANDBOXES.sandboxes())}

    def _count(self, running: int = 0, calls: int = 0, batches: int = 0) -> None:
        with self._lock:
            self._running += running
            self._tool_calls += calls
            self._tool_batches += batches
