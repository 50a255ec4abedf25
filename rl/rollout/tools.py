"""Tool turns for the sampler: spot a row's tool call, run it off the decode loop, hand back the observation's ids.

A `ToolRunner` holds what a rollout worker needs for an env with tools (`env.max_turns > 0`): the env
(its stop strings, `tool_request` and `observation`), the policy's tokenizer (the turn's text and the
observation's ids) and where the calls run (`calls`). After each sampled token, `check` looks whether
the row's current policy turn now ends with one of the env's stop strings (decoding only when the new
token could complete one); if the env makes a request of the transcript, the call is queued, and
`flush` (once per decode step) sends the step's calls off together; each row waits on its own Future
(`Row.waiting`) while the other rows decode: calls of many rows run at once, asynchronously.
`collect` turns a finished call into the tool message's token ids.

Each call runs in the sandbox through `branchrl.verifiers.tools.run_tool`, which never raises for what
the code does. Where (`rollout.tool_pool`): `ThreadCalls`, a thread pool in the rollout worker's own
process, next to its engine (the default: a call is milliseconds of sandbox work, no Ray round trip, and
the warm sandboxes, one per concurrent call, stay warm between steps); or `remote_tools.VerifierCalls`,
the verifier actors. Either way a call's Future ends in a `ToolOutput`, never an exception. The turn
function sees a `Problem` with the id and prompt only: the gold answer never reaches a tool.
Deliberately not here: decoding, forking, appending to the engine (the sampler's).
"""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Protocol

from branchrl.engine.stop import find_stop
from branchrl.envs.base import Environment, Message, Problem
from branchrl.tree import Tree
from branchrl.verifiers.python_tool import ToolOutput
from branchrl.verifiers.tools import run_tool


class ToolCalls(Protocol):
    """Where tool calls run: one Future per request, each ending in a ToolOutput (never an exception)."""

    def submit(self, requests: list[dict]) -> list[Future]: ...

    def close(self) -> None: ...


class ThreadCalls:
    """Calls on a thread pool of `workers` in this process (`rollout.tool_pool: worker`)."""

    def __init__(self, workers: int = 4):
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tool")

    def submit(self, requests: list[dict]) -> list[Future]:
        return [self.pool.submit(run_tool, request) for request in requests]

    def close(self) -> None:
        self.pool.shutdown(wait=True)


class ToolRunner:
    def __init__(self, env: Environment, tokenizer, workers: int = 4, prompts: dict[str, str] | None = None,
                 calls: ToolCalls | None = None, wait_steps: int = 0):
        """prompts: problem id -> prompt text, what the turn function sees of each problem. calls: where the
        calls run (None: `ThreadCalls(workers)` in this process). wait_steps: 0 = a row resumes at the first decode
        step after its call finished, N = exactly N decode steps after it made the call (blocking then if the call
        is still running), so which row resumes when never depends on timing."""
        self.env, self.tokenizer, self.wait_steps = env, tokenizer, wait_steps
        self.stops, self.max_turns = tuple(env.tool_stops), env.max_turns
        self.prompts = dict(prompts or {})
        self.calls = calls if calls is not None else ThreadCalls(workers)
        self._queued: list = []   # rows whose call `check` found this decode step; `flush` sends them
        self._text: dict[int, str] = {}
        self._last_chars = {s[-1] for s in self.stops if s}

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def could_end_stop(self, token: int) -> bool:
        """Cheap filter: only a token whose text holds a stop string's last character can complete one."""
        if token not in self._text:
            self._text[token] = self.decode([token])
        return any(c in self._text[token] for c in self._last_chars)

    def check(self, tree: Tree, row) -> None:
        """After a token was appended to `row`: queue its tool call when the turn now ends with one (`flush`
        sends it)."""
        node = tree.nodes[row.node]
        if row.turns >= self.max_turns or not node.tokens or not self.could_end_stop(node.tokens[-1]):
            return
        ids = tree.completion_ids(row.node)
        if find_stop(ids[row.turn_start:], self.decode, self.stops) is None:
            return
        problem = Problem(id=tree.problem_id, prompt=self.prompts.get(tree.problem_id, ""), answer="")
        request = self.env.tool_request(problem, self.transcript(tree, row))
        if request is not None:
            row.request = request
            self._queued.append(row)

    def flush(self) -> None:
        """Send the calls queued since the last flush, together (one decode step's); each row now waits on its own."""
        if self._queued:
            rows, self._queued = self._queued, []
            for row, future in zip(rows, self.calls.submit([r.request for r in rows]), strict=True):
                row.waiting = future

    def transcript(self, tree: Tree, row) -> list[Message]:
        """The row's completion so far as messages: runs of policy and tool tokens, decoded."""
        ids, flags = tree.completion_ids(row.node), tree.completion_roles(row.node)
        out, start, calls = [], 0, 0
        for i in range(1, len(ids) + 1):
            if i == len(ids) or flags[i] != flags[start]:
                ok = row.cells_ok[calls] if flags[start] and calls < len(row.cells_ok) else True
                calls += flags[start]
                out.append(Message("tool" if flags[start] else "policy", self.decode(ids[start:i]), ok))
                start = i
        return out

    def collect(self, row) -> tuple[list[int], ToolOutput]:
        """The finished call's observation as token ids, and the tool's output; the row no longer waits and
        has one more turn."""
        output = row.waiting.result()
        message = self.env.observation(row.request, output)
        ids = self.tokenizer.encode(message.text, add_special_tokens=False)
        row.waiting, row.request, row.turns = None, None, row.turns + 1
        row.cells_ok = row.cells_ok + (message.ok,)
        return ids, output

    @staticmethod
    def wait_any(futures: list[Future]) -> None:
        wait(futures, return_when=FIRST_COMPLETED)

    def close(self) -> None:
        self.calls.close()
