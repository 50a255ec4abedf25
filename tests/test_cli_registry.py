"""`branchrl envs`, `branchrl verifiers`, `branchrl env check` and `branchrl verify --strict`, run as users run them."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BRANCHRL = shutil.which("branchrl", path=str(Path(sys.executable).parent)) or shutil.which("branchrl")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def branchrl(*args, cwd, stdin=None):
    return subprocess.run([BRANCHRL, *map(str, args)], cwd=cwd, input=stdin, capture_output=True, text=True,
                          timeout=120)


def test_envs_and_verifiers_list_the_built_ins(tmp_path):
    envs = branchrl("envs", cwd=tmp_path)
    assert envs.returncode == 0, envs.stderr
    names = [line.split()[0] for line in envs.stdout.splitlines()]
    assert names[:9] == ["arithmetic", "countdown", "echo", "gsm8k", "humaneval", "math", "mbpp", "multiply",
                         "synth_fn"]
    assert "gsm8k        built-in branchrl.envs.gsm8k:load_environment" in envs.stdout.splitlines()
    verifiers = branchrl("verifiers", cwd=tmp_path)
    assert verifiers.returncode == 0, verifiers.stderr
    assert ("countdown    countdown-1  built-in  fields: completion, numbers, target, [use_all]"
            in verifiers.stdout.splitlines())


def test_env_check_passes_a_good_env(tmp_path):
    proc = branchrl("env", "check", "arithmetic", "digits=1", "--problems", "20", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "env arithmetic: verifier math, answer marker '####'"
    assert "eval: the split holds fewer than 20 problems; drew 10" in lines  # digits=1: 81 pairs, ~8 held out
    assert lines[-2].startswith("splits: disjoint; worked solutions: ") and lines[-1] == "ok"


@pytest.mark.skipif(not (DATA / "humaneval").is_dir(), reason="needs ../shared/data/humaneval")
def test_env_check_runs_code_solutions_in_the_sandbox(tmp_path):
    proc = branchrl("env", "check", "humaneval", f"path={DATA / 'humaneval'}", "--problems", "8", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == "ok" and "worked solutions: 0 of" not in proc.stdout


BAD_ENV = '''
from branchrl.envs import Environment, Problem


class Leaky(Environment):
    """Eval and train share a problem, and one worked solution is wrong."""

    def __init__(self):
        super().__init__(name="leaky", verifier="math", answer_marker="####")

    def eval_problems(self, n):
        return [Problem(id=f"p{i}", prompt=f"{i}+{i}=", answer=str(2 * i)) for i in range(n)]

    def train_problems(self, n, seed):
        return [Problem(id="p0", prompt="0+0=", answer="0")][:n]

    def warm_start_problems(self, n, seed):
        if n > 5:
            from branchrl.envs import EnvError
            raise EnvError("only 5")
        return [Problem(id=f"w{i}", prompt=f"{i}*2=", answer=str(2 * i), solution=f"#### {2 * i + (i == 3)}")
                for i in range(n)]


def load_environment():
    return Leaky()
'''


def test_env_check_reports_overlaps_and_wrong_solutions_and_exits_1(tmp_path):
    (tmp_path / "leaky.py").write_text(BAD_ENV)
    proc = branchrl("env", "check", "leaky.py", "--problems", "10", "--seeds", "2", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "drawn: eval 10, warm_start 5, train 1 (seeds 0..1)" in lines
    assert "warm_start: the split holds fewer than 10 problems; drew 5" in lines
    assert "eval and train share 1 problem ids: p0" in lines and "eval and train share 1 prompts: '0+0='" in lines
    assert any(line.startswith("solution of w3 is fail: extracted '7' != gold '6'") for line in lines), lines
    assert lines[-2:] == ["splits: OVERLAP; worked solutions: 4 of 5 pass", "FAILED"]


@pytest.mark.parametrize("argv, words", [
    (["env", "check", "nope"], "unknown env 'nope'"),
    (["env", "check", "arithmetic", "digits=0"], "env 'arithmetic': digits must be an integer in 1..12"),
    (["env", "check", "arithmetic", "digits"], "env arguments look like key=value"),
    (["env", "check", "arithmetic", "digits=[3"], "YAML values"),
    (["env", "check", "arithmetic", "--problems", "0"], "--problems and --seeds must be at least 1"),
])
def test_env_check_user_errors_are_one_line_and_exit_2(tmp_path, argv, words):
    proc = branchrl(*argv, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == "", (proc.returncode, proc.stdout, proc.stderr)
    assert len(proc.stderr.splitlines()) == 1 and words in proc.stderr, proc.stderr


def test_verify_strict_exits_1_on_any_error_and_every_error_has_its_line(tmp_path):
    good = {"verifier": "math", "completion": "#### 4", "answer": "4"}
    lines = [json.dumps(good), "", "{broken", json.dumps({**good, "verifier": "nope", "line": "mine"}),
             json.dumps({"verifier": "math", "completion": "#### 5", "answer": "4"}),
             json.dumps({"verifier": "math", "completion": "#### 4"})]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    strict = branchrl("verify", path, "--strict", cwd=tmp_path)
    assert strict.returncode == 1, strict.stderr
    rows = [json.loads(line) for line in strict.stdout.splitlines()]
    assert [(r["verdict"], r.get("line")) for r in rows] == [("pass", None), ("error", 3), ("error", 4),
                                                             ("fail", None), ("error", 6)]
    assert branchrl("verify", path, cwd=tmp_path).returncode == 0  # without --strict errors are data
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "answer": "5"}) + "\n")
    assert branchrl("verify", path, "--strict", cwd=tmp_path).returncode == 0  # a fail is not an error
