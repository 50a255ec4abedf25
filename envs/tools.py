"""The Python tool for multi-turn envs: a mixin that parses `<py>code</py>` calls and formats `<out>...</out>`.

An env that mixes in `PythonTool` declares the stop string `</py>` (a policy turn ends when its text
reaches it) and turns the code between the last `<py>` and that stop into a request for the sandboxed
python tool (`branchrl.verifiers.tools`), with the rollout's earlier clean cells as `history` (their
state is replayed, see python_tool.py). The observation is `<out>` + the program's stdout (and its
error line) + `</out>`, stripped of trailing whitespace, so a short answer is a few characters.
Deliberately not here: running the code (the verifiers' tool) and verifying the final answer.
"""

from __future__ import annotations

import re

from .base import Message, Problem
from .datafile import DatasetEnvironment

OPEN, CLOSE, OUT_OPEN, OUT_CLOSE = "<py>", "</py>", "<out>", "</out>"
# what a tool variant's prompt tells the policy (gsm8k and math with tools=N)
TOOL_NOTE = ("You may run Python: write <py>code</py> and what it prints comes back as <out>...</out>; "
             "use print() to see a value.\n\n")
_CALCULATOR = re.compile(r"<<([^<>=]+)=([^<>]+)>>")


def cell(text: str) -> str | None:
    """The code of the call a policy turn ends with (`...<py>code</py>`), or None."""
    if not text.endswith(CLOSE) or OPEN not in text:
        return None
    return text[text.rindex(OPEN) + len(OPEN):-len(CLOSE)]


class PythonTool:
    """Mixin for an `Environment`: python tool calls in `<py>...</py>`; set `tool_timeout_s` to change the limit."""

    tool_timeout_s: float = 3.0

    def tool_request(self, problem: Problem, transcript: list[Message]) -> dict | None:
        if not transcript or transcript[-1].role != "policy" or (code := cell(transcript[-1].text)) is None:
            return None
        history = [cell(m.text) for m, nxt in zip(transcript, transcript[1:])
                   if m.role == "policy" and nxt.role == "tool" and nxt.ok and cell(m.text) is not None]
        return {"tool": "python", "code": code, "history": history, "timeout_s": self.tool_timeout_s}

    def worked(self, problem: Problem) -> list[tuple[str, str]]:
        return [(m.role, m.text) for m in split_transcript(problem.solution)]

    def observation(self, request: dict, output) -> Message:
        text = output.output + (output.error if output.status != "ok" else "")
        return Message("tool", OUT_OPEN + text.rstrip() + OUT_CLOSE, ok=output.status == "ok")


def split_transcript(text: str) -> list[Message]:
    """A whole transcript's text as messages: every `<out>...</out>` span is a tool message, the rest the
    policy's (a worked warm-start solution is written this way; its tool spans are never trained on)."""
    out, rest = [], text
    while OUT_OPEN in rest and OUT_CLOSE in rest[rest.index(OUT_OPEN):]:
        i = rest.index(OUT_OPEN)
        j = rest.index(OUT_CLOSE, i) + len(OUT_CLOSE)
        if i:
            out.append(Message("policy", rest[:i]))
        out.append(Message("tool", rest[i:j]))
        rest = rest[j:]
    return out + ([Message("policy", rest)] if rest else [])


def calculator_to_tool(solution: str) -> str:
    """GSM8K's calculator annotations as tool calls: `48/2 = <<48/2=24>>24 clips` -> `48/2 =
    <py>print(48/2)</py><out>24</out> clips`. The output is the annotation's result as the data set wrote it
    (Python may print `24.0`): warm-start context, never trained on."""
    def call(m: re.Match) -> str:
        return f"{OPEN}print({m[1].strip()}){CLOSE}{OUT_OPEN}{m[2].strip()}{OUT_CLOSE}"

    out, at = [], 0
    for m in _CALCULATOR.finditer(solution):
        out.append(solution[at:m.start()] + call(m))
        at = m.end()
        if solution.startswith(m[2], at):   # the result the text repeats after the annotation
            at += len(m[2])
    return "".join(out) + solution[at:]


class ToolDatasetEnvironment(PythonTool, DatasetEnvironment):
    """A data-set env whose policy may call the Python tool (`tools=N`: at most N calls per episode)."""


def check_tools(tools) -> int:
    if isinstance(tools, bool) or not isinstance(tools, int) or tools < 0:
        raise ValueError(f"tools must be a whole number of tool calls per episode (0 = none), got {tools!r}")
    return tools


def dataset_env(tools: int, *args, **kwargs) -> DatasetEnvironment:
    """A `DatasetEnvironment`, or with tools > 0 its tool variant: `</py>` ends a turn, at most `tools` calls."""
    if not check_tools(tools):
        return DatasetEnvironment(*args, **kwargs)
    env = ToolDatasetEnvironment(*args, **kwargs)
    env.tool_stops, env.max_turns = (CLOSE,), tools
    return env
