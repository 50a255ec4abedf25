"""Verifiers and envs from user code: `.py` files, dotted paths, entry points; what a broken one says.

Real files on disk and a real installed distribution (pip --target) for the entry points, loaded in
fresh interpreters where registration must not leak into this process.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from branchrl.envs import EnvError, load_env
from branchrl.verifiers import get_verifier, verifier_version, verify
from branchrl.verifiers.registry import UnknownVerifier

VERIFIER_FILE = '''
from branchrl.verifiers import Verifier, failed, passed

def check(completion, word):
    return passed("same") if completion.strip() == word else failed("fail", "different")

def crash(completion):
    raise RuntimeError("plug-in bug")

VERIFIER = Verifier(check=check, version="echo-1", required={"completion": (str,), "word": (str,)},
                    signature=lambda text: text.lower())
CRASHES = Verifier(check=crash, version="crash-1", required={"completion": (str,)})
NOT_A_VERIFIER = 42
'''

ENV_FILE = '''
from pathlib import Path
from branchrl.envs import Problem
from branchrl.envs.base import ProceduralEnvironment

class Words(ProceduralEnvironment):
    def __init__(self, word="hi"):
        super().__init__(name="words", verifier=str(Path(__file__).with_name("echo_verifier.py")))
        self.word = word

    def candidate(self, rng):
        w = f"{self.word}{rng.randint(0, 999)}"
        return w, lambda: Problem(id=w, prompt=w, answer="", solution=w, extras={"word": w})

def load_environment(word="hi"):
    return Words(word)
'''


@pytest.fixture
def plugin_dir(tmp_path):
    (tmp_path / "echo_verifier.py").write_text(VERIFIER_FILE)
    (tmp_path / "words_env.py").write_text(ENV_FILE)
    (tmp_path / "broken.py").write_text("import no_such_dependency_here\n")
    return tmp_path


def test_a_verifier_named_by_its_py_file(plugin_dir):
    path = str(plugin_dir / "echo_verifier.py")
    assert verify({"verifier": path, "completion": "abc", "word": "abc"}).verdict == "pass"
    assert verify({"verifier": path, "completion": "abd", "word": "abc"}).verdict == "fail"
    assert verify({"verifier": path, "completion": "abc"}).details == f"{path} record is missing the 'word' field"
    assert verifier_version(path) == "echo-1" and get_verifier(f"{path}:VERIFIER") is get_verifier(path)


def test_a_crashing_verifier_is_a_counted_error_not_an_exception(plugin_dir):
    result = verify({"verifier": f"{plugin_dir / 'echo_verifier.py'}:CRASHES", "completion": "x"})
    assert result.verdict == "error" and result.score == 0.0
    assert "raised RuntimeError: plug-in bug" in result.details


@pytest.mark.parametrize("name, words", [
    ("no_such_verifier", ["unknown verifier 'no_such_verifier'", "registered: countdown, math, python_tests"]),
    ("missing.py", ["unknown verifier 'missing.py'", "no file"]),
    ("{dir}/echo_verifier.py:NOPE", ["has no attribute 'NOPE'"]),
    ("{dir}/echo_verifier.py:NOT_A_VERIFIER", ["is a int, not a branchrl.verifiers.Verifier"]),
    ("{dir}/broken.py", ["does not load (ModuleNotFoundError", "no_such_dependency_here"]),
])
def test_unresolvable_verifiers_are_error_verdicts_that_say_why(plugin_dir, name, words):
    name = name.format(dir=plugin_dir)
    result = verify({"verifier": name, "completion": "x"})
    assert result.verdict == "error", result
    for word in words:
        assert word in result.details, result.details
    with pytest.raises(UnknownVerifier):
        verifier_version(name)


def test_an_env_named_by_its_py_file_uses_its_own_verifier_and_signature(plugin_dir):
    env = load_env(str(plugin_dir / "words_env.py"), word="yo")
    problems = env.warm_start_problems(5, seed=1)
    assert all(verify(env.verifier_record(p, p.solution)).verdict == "pass" for p in problems)
    assert env.signature("ABC") == "abc"  # the verifier's signature, not the default text one
    assert load_env(f"{plugin_dir / 'words_env.py'}:load_environment").word == "hi"
    with pytest.raises(EnvError, match=r"unknown env 'nope\.py' \(no file .*nope\.py\); known: arithmetic"):
        load_env("nope.py")
    with pytest.raises(EnvError, match=r"env '.*broken\.py': .*does not load \(ModuleNotFoundError"):
        load_env(str(plugin_dir / "broken.py"))
    orphan = plugin_dir / "orphan_env.py"  # its verifier file does not exist: a one-line error at load time
    orphan.write_text(ENV_FILE.replace('"echo_verifier.py"', '"missing_checker.py"'))
    with pytest.raises(EnvError, match=r"env '.*orphan_env\.py': unknown verifier '.*missing_checker\.py' \(no file"):
        load_env(str(orphan))


def test_signatures_come_from_the_verifier():
    code = "```python\ndef f(x):\n    # add one\n    return x+1\n```"
    assert load_env("synth_fn").signature(code) == load_env("synth_fn").signature("def f(x):\n  return (x + 1)")
    assert load_env("arithmetic").signature(" 1+2=3  #### 3\n") == "1+2=3 #### 3"


def test_entry_points_of_an_installed_distribution(plugin_dir, tmp_path_factory):
    """A real distribution (pip --target) registers both groups; a fresh interpreter sees the names."""
    (plugin_dir / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=64"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "echo-plugin"
        version = "0.1.0"
        [tool.setuptools]
        py-modules = ["echo_verifier", "words_env"]
        [project.entry-points."branchrl.verifiers"]
        echo = "echo_verifier:VERIFIER"
        [project.entry-points."branchrl.envs"]
        words = "words_env:load_environment"
    """))
    site = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(plugin_dir)], check=True, capture_output=True, timeout=300)
    code = textwrap.dedent("""
        import json
        from branchrl.envs import load_env
        from branchrl.envs.registry import listed as envs
        from branchrl.verifiers import verify
        from branchrl.verifiers.registry import listed as verifiers
        env = load_env("words", word="ok")
        p = env.train_problems(1, seed=0)[0]
        print(json.dumps({"envs": envs()["words"], "verifiers": verifiers()["echo"],
                          "verdict": verify({"verifier": "echo", "completion": "a", "word": "a"}).verdict,
                          "env_verdict": verify(env.verifier_record(p, p.solution)).verdict}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path_factory.mktemp("elsewhere"), text=True,
                          capture_output=True, env={**os.environ, "PYTHONPATH": str(site)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["envs"] == "entry point words_env:load_environment (echo-plugin)"
    assert got["verifiers"] == "echo-1  entry point echo_verifier:VERIFIER (echo-plugin)  fields: completion, word"
    assert got["verdict"] == got["env_verdict"] == "pass"
