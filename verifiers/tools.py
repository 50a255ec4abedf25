"""Tools a multi-turn env may call, by name, and `run_tool(request)`: the one dispatcher over them.

A request is plain data (`{"tool": "python", "code": ..., "history": [...]}`, made by an env's
`tool_request`), so it crosses process boundaries like a verifier record. `run_tool` never raises: an
unknown tool or a bad request is an "unavailable" `ToolOutput` naming the problem (counted by the
caller as our error, like a verifier's "error"), and everything the tool's code does is an observation.
Deliberately not here: scheduling calls (the sampler's) and formatting observations (the env's).
"""

import time
from typing import Callable

from .python_tool import DEFAULT_TIMEOUT_S, ToolOutput, run_python_tool


def _python(request: dict) -> ToolOutput:
    code, history = request.get("code"), request.get("history", [])
    if not isinstance(code, str) or not isinstance(history, list) or not all(isinstance(c, str) for c in history):
        return ToolOutput("unavailable", "", "python tool request needs 'code' (str) and 'history' (list of str)", 0.0)
    timeout_s = request.get("timeout_s", DEFAULT_TIMEOUT_S)
    return run_python_tool(code, history, float(timeout_s))


TOOLS: dict[str, Callable[[dict], ToolOutput]] = {"python": _python}


def run_tool(request: dict) -> ToolOutput:
    """Run one tool request; never raises."""
    start = time.monotonic()
    tool = TOOLS.get(request.get("tool")) if isinstance(request, dict) else None
    if tool is None:
        why = f"unknown tool in request {str(request)[:100]!r}; have {sorted(TOOLS)}"
        return ToolOutput("unavailable", "", why, 0.0)
    try:
        return tool(request)
    except Exception as e:  # our own bug: loud in the record, never a crash of the run
        return ToolOutput("unavailable", "", f"tool crashed: {type(e).__name__}: {e}"[:300], time.monotonic() - start)
