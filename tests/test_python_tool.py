"""The sandboxed Python tool: outputs and errors as observations, state by replay, and attacks sent as tool
calls contained (nothing escapes, nothing is left running, the next call is served).

Calls go through the env's turn function (`Multiply.turn`: parse `<py>...</py>`, run, format `<out>`), the
path the sampler takes, so the attack is what a policy would write.
"""

import os
import shutil
import socket
import uuid

import pytest
from test_sandbox_attacks import _leftovers

from branchrl.envs.base import Message
from branchrl.envs.multiply import Multiply
from branchrl.envs.tools import split_transcript
from branchrl.verifiers.python_tool import run_python_tool
from branchrl.verifiers.tools import run_tool

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")
ENV = Multiply()
PROBLEM = ENV.train_problems(1, 0)[0]


def call(code: str, earlier: list[str] = (), timeout_s: float = 1.0) -> Message:
    """The tool message the env returns for a policy turn ending in `<py>code</py>` after `earlier` clean calls."""
    ENV.tool_timeout_s = timeout_s
    transcript = []
    for c in earlier:
        transcript += [Message("policy", f"<py>{c}</py>"), Message("tool", "<out></out>")]
    return ENV.turn(PROBLEM, transcript + [Message("policy", f"think <py>{code}</py>")])


def attack(code: str, timeout_s: float = 1.0) -> Message:
    """Run an attack as a tool call: an observation comes back, nothing survives, the tool still serves."""
    out = call(code, timeout_s=timeout_s)
    assert out.role == "tool" and out.text.startswith("<out>") and out.text.endswith("</out>")
    assert "unavailable" not in out.text
    assert _leftovers(os.getpid()) == [], "a sandboxed process survived its tool call"
    assert call("print(6*7)").text == "<out>42</out>"
    return out


def test_output_errors_and_caps_are_observations():
    assert run_python_tool("print(123*456)").output == "56088\n"
    out = run_python_tool("print('partial'); 1/0")
    assert (out.status, out.output, out.error) == ("error", "partial\n", "ZeroDivisionError: division by zero")
    long = run_python_tool("print('x' * 100000)", max_chars=50)
    assert long.status == "ok" and long.output == "x" * 50 and long.truncated
    assert run_python_tool("def f(:").status == "error"
    assert run_tool({"tool": "nope"}).status == "unavailable"      # our problem, counted, never raised
    assert run_tool({"tool": "python", "code": 3}).status == "unavailable"


def test_state_is_kept_by_replaying_earlier_clean_cells():
    assert call("print(x * 2)", earlier=["x = 21"]).text == "<out>42</out>"
    assert call("print(x)").text.startswith("<out>NameError")           # a fresh rollout has no x
    # an earlier cell's output is not repeated, and a cell that failed is not part of the state
    transcript = [Message("policy", "<py>print('once'); y = 1</py>"), Message("tool", "<out>once</out>"),
                  Message("policy", "<py>z = 1/0</py>"), Message("tool", "<out>ZeroDivisionError</out>", ok=False),
                  Message("policy", "<py>print(y, 'z' in globals())</py>")]
    assert ENV.turn(PROBLEM, transcript).text == "<out>1 False</out>"


def test_a_turn_without_a_call_is_no_tool_message():
    assert ENV.turn(PROBLEM, [Message("policy", "no call here #### 5")]) is None
    assert ENV.tool_request(PROBLEM, []) is None
    assert [m.role for m in split_transcript(PROBLEM.solution)] == ["policy", "tool", "policy"]


@needs_bwrap
def test_loop_that_ignores_signals_times_out():
    code = ("import signal\nfor s in signal.valid_signals():\n    try:\n        signal.signal(s, signal.SIG_IGN)\n"
            "    except (OSError, ValueError):\n        pass\nwhile True:\n    pass\n")
    assert "time limit" in attack(code).text


@needs_bwrap
def test_fork_bomb():
    attack("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n")


@needs_bwrap
def test_memory_bomb():
    assert "MemoryError" in attack("hog = [0] * (1 << 31)\n").text
    attack("hog = []\nwhile True:\n    hog.append(bytearray(1 << 27))\n", timeout_s=3)


@needs_bwrap
def test_network_is_unreachable():
    with socket.create_server(("127.0.0.1", 0)) as server:   # a host service the sandbox must not reach
        server.settimeout(0.1)
        code = (f"import socket\nfor host, port in (('127.0.0.1', {server.getsockname()[1]}), ('1.1.1.1', 53)):\n"
                "    try:\n        socket.create_connection((host, port), timeout=0.3).close()\n"
                "        print('connected')\n    except OSError:\n        print('offline')\n")
        assert attack(code).text == "<out>offline\noffline</out>"
        with pytest.raises(TimeoutError):
            server.accept()


@needs_bwrap
def test_parent_environment_is_invisible(monkeypatch):
    secret = "s3cret-" + uuid.uuid4().hex
    monkeypatch.setenv("BRANCHRL_TEST_SECRET", secret)
    code = ("import os\nfound = os.environ.get('BRANCHRL_TEST_SECRET', '')\nfor pid in os.listdir('/proc'):\n"
            "    try:\n        found += open(f'/proc/{pid}/environ').read()\n    except OSError:\n        pass\n"
            "print(found)\n")
    assert secret not in attack(code).text


@needs_bwrap
def test_writing_outside_the_sandbox(tmp_path):
    host_target = tmp_path / "pwned.txt"
    code = (f"import os\nfor path in ({str(host_target)!r}, '/usr/pwned', '/pwned'):\n    try:\n"
            "        os.makedirs(os.path.dirname(path), exist_ok=True)\n        open(path, 'w').write('owned')\n"
            "        print('wrote', path)\n    except OSError:\n        pass\n")
    seen = attack(code).text   # the host's /tmp path is inside the sandbox's private /tmp: a write there lands there
    assert "/usr/pwned" not in seen and "wrote /pwned" not in seen
    assert not host_target.exists() and not os.path.exists("/usr/pwned") and not os.path.exists("/pwned")


@needs_bwrap
def test_killing_the_parent_and_every_process():
    code = ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nfor pid in os.listdir('/proc'):\n"
            "    if pid.isdigit() and int(pid) != os.getpid():\n        try:\n"
            "            os.kill(int(pid), signal.SIGKILL)\n        except OSError:\n            pass\n")
    attack(code)
    attack("import os, signal\nos.kill(-1, signal.SIGKILL)\n")


def test_tool_variants_of_gsm8k_and_math_offer_the_tool():
    from pathlib import Path

    from branchrl.envs import load_env
    from branchrl.envs.tools import calculator_to_tool

    fixtures = Path(__file__).parent / "fixtures" / "data"
    gsm = load_env("gsm8k", path=str(fixtures / "gsm8k"), tools=3)
    assert (gsm.tool_stops, gsm.max_turns) == (("</py>",), 3)
    problem = gsm.warm_start_problems(1, 0)[0]
    assert problem.prompt.startswith("You may run Python") and "<<" not in problem.solution
    roles = [role for role, _ in gsm.worked(problem)]
    assert "tool" in roles and roles[0] == "policy"
    assert calculator_to_tool("48/2 = <<48/2=24>>24 clips") == "48/2 = <py>print(48/2)</py><out>24</out> clips"
    assert load_env("gsm8k", path=str(fixtures / "gsm8k")).max_turns == 0     # the plain env is unchanged
    math_env = load_env("math", path=str(fixtures / "math500"), tools=1)
    assert math_env.max_turns == 1 and math_env.eval_problems(1)[0].prompt.startswith("You may run Python")
    with pytest.raises(ValueError, match="whole number of tool calls"):
        load_env("gsm8k", path=str(fixtures / "gsm8k"), tools=-1)


def test_multiply_splits_are_disjoint_and_product_digits_filters():
    env = Multiply(product_digits=5)
    drawn = (("eval", env.eval_problems(50)), ("warm", env.warm_start_problems(50, 0)),
             ("train", env.train_problems(50, 0)))
    ids = {split: {p.id for p in problems} for split, problems in drawn}
    assert not ids["eval"] & ids["warm"] and not ids["eval"] & ids["train"] and not ids["warm"] & ids["train"]
    assert all(len(p.answer) == 5 for p in env.eval_problems(50))
    swapped = {"*".join(reversed(i.split("*"))) for i in ids["eval"]}
    assert not swapped & (ids["train"] | ids["warm"])   # a*b held out means b*a is never trained on
    with pytest.raises(ValueError, match="product_digits"):
        Multiply(product_digits=7)


def test_multiply_tool_share_mixes_worked_solutions_by_problem():
    env, half = Multiply(), Multiply(tool_share=0.5)
    problems = half.warm_start_problems(400, 0)
    uses = [p for p in problems if "<py>" in p.solution]
    assert 0.4 < len(uses) / len(problems) < 0.6
    direct = next(p for p in problems if "<py>" not in p.solution)
    assert direct.solution == f"#### {direct.answer}" and half.worked(direct) == [("policy", direct.solution)]
    # the draw is the problem's, not the seed's: the same problem is worked the same way in every run
    again = {p.id: p.solution for p in half.warm_start_problems(400, 1)}
    shared = [p for p in problems if p.id in again]
    assert shared and all(again[p.id] == p.solution for p in shared)
    assert all("<py>" in p.solution for p in env.warm_start_problems(50, 0))
    with pytest.raises(ValueError, match="tool_share"):
        Multiply(tool_share=0)
