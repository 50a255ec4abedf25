"""`rollout.tool_pool: verifiers`: tool calls run on the verifier actors (real Ray, real sandboxed processes).

A decode step's calls go out as one Ray call per actor, spread least-loaded; the actors run them beside
verification (their own concurrency group) in warm sandboxes; a launched run's rollout worker sends every call
there (the actors' own counters add up to the trees' calls) and the transcripts verify. A lost call (an actor
SIGKILLed with calls in flight, a Ray call that raises, an actor that never answers) is an `unavailable` output,
never a failed or hung rollout, and the verifier fault handling still works on the restarted actor."""

import os
import signal
import time
from types import SimpleNamespace

import pytest
from test_generate import TOOL_MODEL
from test_tool_rollout import TOKENIZER, CountingTool, model  # noqa: F401  (model: the tiny model fixture)
from test_tool_rollout import rollout as local_rollout

from branchrl import dispatch
from branchrl.config import BranchConfig, load_config
from branchrl.engine import Decoder, Engine, SamplingParams
from branchrl.launch import _launch_verifiers
from branchrl.rollout.remote_tools import VerifierCalls
from branchrl.rollout.sampler import BranchSampler
from branchrl.rollout.tools import ToolRunner
from branchrl.verifier_pool import TOOLS_GROUP

POOL = ["rollout.tool_pool=verifiers", "verify.workers=2", "rollout.tool_workers=2"]


def _stats(ray, actors) -> list[dict]:
    return ray.get([a.stats.options(concurrency_group=TOOLS_GROUP).remote() for a in actors])


def _call(code: str, timeout_s: float = 3.0) -> dict:
    return {"tool": "python", "code": code, "history": [], "timeout_s": timeout_s}


@pytest.fixture(scope="module")
def verifiers(ray_cluster):
    actors = _launch_verifiers(load_config(None, POOL))
    yield actors
    for a in actors:
        ray_cluster.kill(a)


def test_a_steps_calls_go_out_as_one_ray_call_per_actor_and_run_beside_verification(ray_cluster, verifiers):
    ray = ray_cluster
    before = _stats(ray, verifiers)
    # a python_tests record that sleeps 3 s keeps actor 0's verification busy while its tool batch runs
    slow = {"verifier": "python_tests", "completion": "```python\nimport time\ntime.sleep(3)\n```",
            "tests": "assert True", "timeout_s": 10}
    verifying = verifiers[0].verify_batch.remote([slow])
    time.sleep(0.5)
    start = time.monotonic()
    futures = VerifierCalls(verifiers).submit([_call(f"print({n} * 7)") for n in range(6)])
    outputs = [f.result(timeout=60) for f in futures]
    tools_s = time.monotonic() - start
    assert [(o.status, o.output.strip()) for o in outputs] == [("ok", str(n * 7)) for n in range(6)]
    results, _ = ray.get(verifying)
    assert results[0].verdict == "pass" and results[0].seconds >= 3
    assert tools_s < 2.5, f"the tool batch waited for the verify batch ({tools_s:.1f} s)"
    after = _stats(ray, verifiers)
    # least-loaded: 3 calls each, in one run_tools call per actor
    assert [a["tool_calls"] - b["tool_calls"] for a, b in zip(after, before)] == [3, 3]
    assert [a["tool_batches"] - b["tool_batches"] for a, b in zip(after, before)] == [1, 1]
    assert all(1 <= a["sandboxes"] <= 3 for a in after)   # warm ones, reused (2 tool workers + the verify record)


def test_a_sampler_rollout_on_the_actors_matches_the_local_pool(ray_cluster, verifiers, model):  # noqa: F811
    """Every call of a sampler's rollout ran on an actor, spread over both, and its output came back into the row."""
    ray = ray_cluster
    env, prompts = CountingTool(max_turns=2), ["12*34=", "5*6=", "777*8="]
    before = _stats(ray, verifiers)
    remote = _rollout(model, env, prompts, VerifierCalls(verifiers, rank=1))
    after = _stats(ray, verifiers)
    calls = sum(t.tool_calls_run for t in remote)
    assert calls >= 3 and all(t.tool_unavailable == 0 for t in remote)
    assert sum(a["tool_calls"] - b["tool_calls"] for a, b in zip(after, before)) == calls
    assert all(a["tool_calls"] > b["tool_calls"] for a, b in zip(after, before)), "calls spread over both actors"
    for tree in remote:   # the observations are the tool's: each row's turn length, as with the local pool
        for leaf in tree.leaves():
            ids, flags = tree.completion_ids(leaf), tree.completion_roles(leaf)
            if any(flags):
                start = flags.index(True)
                turn = TOKENIZER.decode(ids[:start], skip_special_tokens=True)
                assert TOKENIZER.decode(ids[start:start + sum(flags)]).startswith(f"[{len(turn)}]"[:sum(flags)])


def test_with_fixed_wait_steps_the_actors_give_the_local_pools_trees(ray_cluster, verifiers, model):  # noqa: F811
    """rollout.tool_wait_steps takes timing out of the rollout, so the pool the calls run on changes nothing."""
    env, prompts = CountingTool(max_turns=2), ["12*34=", "5*6=", "777*8="]
    remote = _rollout(model, env, prompts, VerifierCalls(verifiers), wait_steps=3)
    local = local_rollout(model, env, prompts, wait_steps=3)
    assert sum(t.tool_calls_run for t in remote) >= 3
    assert [[(n.tokens, n.tool_flags()) for n in t.nodes] for t in remote] == \
           [[(n.tokens, n.tool_flags()) for n in t.nodes] for t in local]


def _rollout(policy, env, prompts, calls, max_new=40, wait_steps=0):
    decoder = Decoder(policy.config.to_dict())
    decoder.load_state_dict(policy.state_dict())
    sampler = BranchSampler(Engine(decoder, pad_id=0), TOKENIZER.eos_token_id, max_new, SamplingParams(1.0), seed=0,
                            tools=ToolRunner(env, TOKENIZER, calls=calls, wait_steps=wait_steps))
    ids = [(f"p{i}", TOKENIZER.encode(p)) for i, p in enumerate(prompts)]
    return sampler.run(ids, BranchConfig(policy="independent", roots=3, max_leaves=3), policy_version=0)


def test_a_verifier_killed_with_calls_in_flight_gives_unavailable_outputs_and_comes_back(ray_cluster):
    ray = ray_cluster
    actors = _launch_verifiers(load_config(None, [*POOL, "verify.workers=1"]))
    try:
        pid = _stats(ray, actors)[0]["pid"]
        calls = VerifierCalls(actors)
        futures = calls.submit([_call("import time; time.sleep(8); print(1)", timeout_s=20)] * 2)
        deadline = time.monotonic() + 60
        while _stats(ray, actors)[0]["tool_calls_running"] < 2:   # both calls really run in the actor
            assert time.monotonic() < deadline
            time.sleep(0.2)
        start = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        outputs = [f.result(timeout=60) for f in futures]
        assert time.monotonic() - start < 30, "the lost calls waited for the deadline instead of the actor's death"
        assert [o.status for o in outputs] == ["unavailable"] * 2
        assert "verifier actor 0 lost the call" in outputs[0].error and calls.in_flight() == [0]
        # Ray restarts the actor: the next calls are served, and verification goes on as dispatch does it
        again = calls.submit([_call("print(6 * 7)")])[0].result(timeout=120)
        assert (again.status, again.output.strip()) == ("ok", "42")
        assert _stats(ray, actors)[0]["pid"] != pid
        roles = SimpleNamespace(verifiers=actors, faults=dispatch.Faults())
        record = {"verifier": "math", "completion": "#### 42", "answer": "42"}
        assert [r.verdict for r in dispatch.verify(roles, [record])] == ["pass"]
    finally:
        for a in actors:
            ray.kill(a)


def test_a_failing_or_silent_actor_ends_the_rollout_with_unavailable_outputs(ray_cluster, model):  # noqa: F811
    ray = ray_cluster

    class Failing:  # defined here so Ray ships it by value; deterministic failures on the actor side
        def run_tools(self, requests):
            raise RuntimeError("the tool pool is broken")

    class Silent:
        def run_tools(self, requests):
            time.sleep(30)
            return []

    failing = ray.remote(concurrency_groups={TOOLS_GROUP: 4})(Failing).remote()
    silent = ray.remote(concurrency_groups={TOOLS_GROUP: 4})(Silent).remote()
    try:
        start = time.monotonic()
        trees = _rollout(model, CountingTool(max_turns=2), ["12*34=", "5*6="], VerifierCalls([failing]))
        assert time.monotonic() - start < 60
        calls = sum(t.tool_calls_run for t in trees)
        assert calls >= 2 and sum(t.tool_unavailable for t in trees) == calls
        for tree in trees:   # every row ended, each observation the env's rendering of the error
            assert all(tree.nodes[leaf].finish in ("eos", "length") for leaf in tree.leaves())
        lost = VerifierCalls([silent], timeout_s=1.0).submit([_call("print(1)")])[0].result(timeout=10)
        assert lost.status == "unavailable" and "did not answer within 1s" in lost.error
        none = VerifierCalls([]).submit([_call("print(1)")])[0].result(timeout=1)
        assert none.status == "unavailable"
    finally:
        ray.kill(failing)
        ray.kill(silent)


@pytest.fixture(scope="module")
def multiply_checkpoint(tmp_path_factory) -> str:
    """The tiny multiply model of test_generate, warm-started to call `<py>print(a*b)</py>` and copy its output."""
    from branchrl.envs import load_env
    from branchrl.training.trainer import Trainer

    cfg = load_config(None, TOOL_MODEL)
    env = load_env(cfg.env.name, **cfg.env.kwargs)
    trainer = Trainer(cfg)
    trainer.sft([(p.prompt, env.worked(p)) for p in env.warm_start_problems(48, 0)], epochs=30, lr=0.003, batch_size=8)
    path = tmp_path_factory.mktemp("multiply") / "ckpt"
    trainer.save(str(path))
    return str(path)


def test_a_launched_rollout_worker_runs_its_calls_on_the_verifier_actors(ray_cluster, multiply_checkpoint, tmp_path):
    """Launch as `branchrl generate` does (a fixed policy, no trainer): the rollout worker gets the verifier
    handles with every batch, every call it makes runs on an actor (their counters add up to the trees'
    calls, none ran in the worker), and the transcripts verify."""
    from branchrl.generate import prepare
    from branchrl.loop import launched, sync, verify_leaves
    from branchrl.models import describe_unloaded
    from branchrl.progress import Progress

    ray = ray_cluster
    cfg = load_config(None, [*TOOL_MODEL, *POOL, f"model.path={multiply_checkpoint}", "generate.problems=8",
                             "branch.policy=independent", "branch.roots=4", "branch.max_leaves=4",
                             "rollout.workers=1", "rollout.max_new_tokens=48", "rollout.temperature=0.7"])
    env, tokenizer, problems = prepare(cfg, tmp_path / "out")
    with launched(cfg, env, tokenizer, tmp_path / "out", Progress(1), None,
                  policy=describe_unloaded(cfg.model, cfg.run.seed)) as ctx:
        assert ctx.roles.tool_actors == ctx.roles.verifiers
        sync(ctx.roles, dispatch.publish_fixed(ctx.roles))
        prompts = [(p.id, tokenizer.encode(p.prompt)) for p in problems]
        trees, _ = dispatch.collect(ctx.roles, dispatch.submit(ctx.roles, problems, prompts, key=1))
        leaves, _ = verify_leaves(ctx, problems, trees)
        served = _stats(ray, ctx.roles.verifiers)
        worker = ray.get(ctx.roles.rollout[0].__ray_call__.remote(lambda self: (
            type(self.tools.calls).__name__,
            len(__import__("branchrl.verifiers.warm_sandbox", fromlist=["SANDBOXES"]).SANDBOXES.sandboxes()))))
    calls = sum(t.tool_calls_run for t in trees)
    assert calls > 0 and sum(t.tool_unavailable for t in trees) == 0
    assert sum(s["tool_calls"] for s in served) == calls and all(s["tool_calls"] > 0 for s in served)
    # rows that end their turn on the same decode step share a Ray call (measured: 32 calls in 3 batches)
    assert sum(s["tool_batches"] for s in served) < calls
    assert worker == ("VerifierCalls", 0)   # the rollout worker's process never started a sandbox
    assert all(s["sandboxes"] <= 2 for s in served)   # warm sandboxes reused: at most tool_workers per actor
    passed = [leaf for leaf in leaves if leaf.passed]
    assert passed and all(leaf.tool_calls >= 1 for leaf in passed)
    assert all("<py>" in leaf.text and "<out>" in leaf.text for leaf in passed)
