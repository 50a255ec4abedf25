"""Tool calls on the verifier actors (`rollout.tool_pool: verifiers`): the rollout worker's side.

`VerifierCalls.submit(requests)` takes the calls one decode step made, spreads them over the verifier actors
least-loaded first (the calls this worker has in flight on each; ties go round the actors starting at the
worker's rank, so the workers do not all start on actor 0) and sends one `run_tools` Ray call per actor that got
some (`verifier_pool.VerifierWorker`, in its tool concurrency group). Each request has its own Future, resolved
from its batch's ObjectRef (`ref.future()`), so the sampler waits on a row exactly as with the local pool and
keeps decoding the others meanwhile. A batch's rows resume together, when its slowest call is done.

A lost call is our error, never an exception into the rollout: an actor that dies with the batch in flight
(RayActorError), one Ray cannot reach, an error raised by the Ray call, or no answer within `timeout_s` (an
actor that hangs, or one Ray cannot bring back) ends each call of the batch as an `unavailable` ToolOutput, which
the sampler counts in `tool_unavailable` and the env shows to the policy as an error. Nothing is retried: a lost
call costs its row one error observation, and a retry could run a call twice. Ray restarts a dead actor
(max_restarts, launch.py) and later batches reach it again; verification on it is dispatch.py's business.
Deliberately not here: running a call (the actor's) and which rows call (tools.py).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

from branchrl.verifier_pool import TOOLS_GROUP
from branchrl.verifiers.python_tool import ToolOutput

# a call is seconds at most (python_tool's timeout plus grace), even queued behind others on a loaded actor; an
# actor silent this long is lost, not slow
CALL_TIMEOUT_S = 120.0


def unavailable(why: str) -> ToolOutput:
    return ToolOutput("unavailable", "", why[:300], 0.0)


class VerifierCalls:
    def __init__(self, actors: list, rank: int = 0, timeout_s: float = CALL_TIMEOUT_S):
        """actors: the verifier actors' handles (`Roles.tool_actors`); rank: this rollout worker's."""
        self.actors, self.rank, self.timeout_s = list(actors), rank, timeout_s
        self._lock = threading.Lock()
        self._load = [0] * len(self.actors)   # calls in flight per actor

    def submit(self, requests: list[dict]) -> list[Future]:
        """One Future per request, each ending in a ToolOutput; one Ray call per actor that got some."""
        futures = [Future() for _ in requests]
        if not self.actors:
            for f in futures:
                f.set_result(unavailable("no verifier actors to run tool calls on"))
            return futures
        shares: dict[int, list[int]] = {}
        with self._lock:
            n = len(self.actors)
            for i in range(len(requests)):
                actor = min(range(n), key=lambda k: (self._load[k], (k - self.rank) % n))
                self._load[actor] += 1
                shares.setdefault(actor, []).append(i)
        for actor, idx in shares.items():
            _Batch(self, actor, [futures[i] for i in idx]).send([requests[i] for i in idx])
        return futures

    def in_flight(self) -> list[int]:
        """Calls this worker has in flight on each actor."""
        with self._lock:
            return list(self._load)

    def release(self, actor: int, calls: int) -> None:
        with self._lock:
            self._load[actor] -= calls

    def close(self) -> None:
        pass   # nothing of ours runs here; a batch still in flight resolves (or times out) on its own


class _Batch:
    """One Ray call's requests: its Futures are resolved exactly once, by the answer or by the deadline."""

    def __init__(self, calls: VerifierCalls, actor: int, futures: list[Future]):
        self.calls, self.actor, self.futures = calls, actor, futures
        self._lock = threading.Lock()
        self._done = False
        self.ref = None   # held until the answer: the object must outlive its Future's callback
        self.timer = threading.Timer(calls.timeout_s, self._expire)
        self.timer.daemon = True

    def send(self, requests: list[dict]) -> None:
        self.timer.start()
        try:
            self.ref = self.calls.actors[self.actor].run_tools.options(concurrency_group=TOOLS_GROUP).remote(requests)
            self.ref.future().add_done_callback(self._answered)
        except Exception as e:   # Ray refused the call itself (e.g. shutting down): lost like any other
            self._resolve(None, f"could not send to verifier actor {self.actor}: {_one_line(e)}")

    def _answered(self, future: Future) -> None:
        try:
            outputs = future.result()
        except BaseException as e:   # the actor died with the batch in flight, or the call raised
            self._resolve(None, f"verifier actor {self.actor} lost the call: {_one_line(e)}")
            return
        if not isinstance(outputs, list) or len(outputs) != len(self.futures):
            self._resolve(None, f"verifier actor {self.actor} answered {type(outputs).__name__}, not "
                                f"{len(self.futures)} tool outputs")
            return
        self._resolve(outputs, "")

    def _expire(self) -> None:
        self._resolve(None, f"verifier actor {self.actor} did not answer within {self.calls.timeout_s:.0f}s")

    def _resolve(self, outputs: list[ToolOutput] | None, why: str) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        self.timer.cancel()
        self.calls.release(self.actor, len(self.futures))
        for i, f in enumerate(self.futures):
            f.set_result(outputs[i] if outputs is not None else unavailable(why))


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"[:200]
