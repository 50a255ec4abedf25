"""Environments: disjoint, reproducible problem splits; worked solutions the verifier accepts; load_env lookup."""

import sys
import textwrap

import pytest

from branchrl.envs import EnvError, Environment, Problem, load_env
from branchrl.envs.arithmetic import Arithmetic, split_of, worked_solution
from branchrl.verifiers import verify


@pytest.fixture(scope="module")
def env2():
    return load_env("arithmetic", digits=2)


def ids(problems):
    return [p.id for p in problems]


# ------------------------------------------------------------------ splits
def test_train_warm_start_and_eval_never_overlap_across_seeds(env2):
    # 2 digits: 8100 pairs, so these samples cover most of each split
    evals = set(ids(env2.eval_problems(700)))
    warm = {i for seed in (0, 1, 7) for i in ids(env2.warm_start_problems(600, seed))}
    train = {i for seed in (0, 1, 2, 1_000_004) for i in ids(env2.train_problems(3000, seed))}
    assert len(evals) == 700 and len(warm) > 700 and len(train) > 5000
    assert not evals & warm and not evals & train and not warm & train
    assert {split_of(i) for i in evals} == {"eval"} and {split_of(i) for i in train} == {"train"}


def test_each_call_returns_n_distinct_well_formed_problems():
    env = Arithmetic(digits=3)
    problems = env.train_problems(500, seed=3)
    assert len(problems) == len(set(ids(problems))) == 500
    for p in problems:
        a, b = map(int, p.id.split("+"))
        assert 100 <= a <= 999 and 100 <= b <= 999
        assert p.prompt == f"{a}+{b}=" and p.answer == str(a + b)


def test_same_seed_same_problems_other_seed_other_problems(env2):
    assert env2.train_problems(64, seed=5) == load_env("arithmetic", digits=2).train_problems(64, seed=5)
    assert env2.warm_start_problems(64, seed=5) == env2.warm_start_problems(64, seed=5)
    assert ids(env2.train_problems(64, seed=5)) != ids(env2.train_problems(64, seed=6))
    assert ids(env2.warm_start_problems(64, seed=5)) != ids(env2.warm_start_problems(64, seed=6))


def test_eval_problems_are_the_same_for_every_seed_and_a_prefix_of_more(env2):
    other = Arithmetic(digits=2)
    assert env2.eval_problems(300) == other.eval_problems(300)
    assert env2.eval_problems(50) == env2.eval_problems(300)[:50]


def test_asking_for_more_problems_than_a_split_holds_is_an_env_error():
    env = load_env("arithmetic", digits=1)  # 81 pairs, about 8 in the eval split
    with pytest.raises(EnvError, match=r"only \d+ distinct eval problems, asked for 500; ask for fewer or raise "
                                       r"digits"):
        env.eval_problems(500)


# ------------------------------------------------------------------ worked solutions and verification
def test_worked_solution_shows_each_column_with_its_carry():
    assert worked_solution(457, 386) == "7+6=13 5+8+1=14 4+3+1=8 #### 843"
    assert worked_solution(99, 99) == "9+9=18 9+9+1=19 #### 198"
    assert worked_solution(10, 5) == "0+5=5 1+0=1 #### 15"


@pytest.mark.parametrize("digits", [1, 2, 5, 12])
def test_every_worked_solution_passes_the_verifier_and_a_wrong_answer_fails(digits):
    env = Arithmetic(digits=digits)
    problems = env.warm_start_problems(5 if digits == 1 else 200, seed=0) + env.train_problems(5, seed=1)
    for p in problems:
        result = verify(env.verifier_record(p, p.solution))
        assert result.verdict == "pass", (p, result)
        wrong = p.solution.rsplit("#### ", 1)[0] + f"#### {int(p.answer) + 1}"
        assert verify(env.verifier_record(p, wrong)).verdict == "fail"
        assert verify(env.verifier_record(p, "")).verdict == "fail"


def test_verifier_record_is_the_branchrl_verify_format(env2):
    p = env2.eval_problems(1)[0]
    assert env2.verifier_record(p, "x") == {"verifier": "math", "completion": "x", "answer": p.answer, "numeric": True}


@pytest.mark.parametrize("digits", [0, 13, -1, "3", 2.0, True])
def test_digits_out_of_range_is_a_clear_error(digits):
    with pytest.raises(EnvError) as info:
        load_env("arithmetic", digits=digits)
    assert str(info.value) == f"env 'arithmetic': digits must be an integer in 1..12, got {digits!r}"


# ------------------------------------------------------------------ load_env
def test_builtin_name_and_unknown_kwargs():
    env = load_env("arithmetic", digits=4)
    assert isinstance(env, Arithmetic) and env.digits == 4 and env.name == "arithmetic"
    with pytest.raises(EnvError, match="env 'arithmetic'.*unexpected keyword argument 'digit'"):
        load_env("arithmetic", digit=4)


ENV_MODULE = '''
from branchrl.envs import Environment, Problem


class Echo(Environment):
    def __init__(self, word="hi"):
        super().__init__(name="echo")
        self.word = word

    def train_problems(self, n, seed):
        return [Problem(id=f"t{seed}-{i}", prompt=self.word, answer="1", solution="#### 1") for i in range(n)]


def load_environment(word="hi"):
    return Echo(word)


def shouting(**kwargs):
    return Echo(kwargs.get("word", "hi").upper())


def not_an_env():
    return 42
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A user's one-file env on sys.path, named per test so imports never leak between tests."""
    name = f"user_env_{tmp_path.name}".replace("-", "_")
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(ENV_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_dotted_path_module_and_function(user_module):
    env = load_env(user_module, word="yo")  # a bare module means its load_environment()
    assert isinstance(env, Environment) and env.name == "echo" and env.word == "yo"
    assert load_env(f"{user_module}:shouting", word="yo").word == "YO"
    assert env.train_problems(2, seed=3)[1] == Problem(id="t3-1", prompt="yo", answer="1", solution="#### 1")


def test_dotted_path_mistakes_name_the_env(user_module):
    with pytest.raises(EnvError, match=f"env '{user_module}:missing'.*has no attribute 'missing'"):
        load_env(f"{user_module}:missing")
    with pytest.raises(EnvError, match=f"env '{user_module}:not_an_env'.*returned int, not an Environment"):
        load_env(f"{user_module}:not_an_env")
    with pytest.raises(EnvError, match=f"env '{user_module}'.*unexpected keyword argument 'colour'"):
        load_env(user_module, colour="red")


@pytest.mark.parametrize("name", ["arithmatic", "no.such.module:fn", "", ".relative", ":fn"])
def test_unknown_env_names_it_and_lists_the_known(name):
    with pytest.raises(EnvError) as info:
        load_env(name)
    message = str(info.value)
    assert message.startswith(f"unknown env {name!r}") and "known: arithmetic" in message


def test_swapped_operands_share_a_split():
    """A held-out 12+34 must not be trained as 34+12."""
    pairs = [(a, b) for a in range(10, 100, 7) for b in range(10, 100, 3)]
    assert all(split_of(f"{a}+{b}") == split_of(f"{b}+{a}") for a, b in pairs)
    evals = {tuple(sorted(map(int, p.id.split("+")))) for p in Arithmetic(digits=2).eval_problems(300)}
    train = {tuple(sorted(map(int, p.id.split("+"))))
             for s in range(3) for p in Arithmetic(digits=2).train_problems(500, s)}
    assert not evals & train


def test_restating_the_question_is_not_a_pass():
    env = Arithmetic(digits=2)
    p = env.eval_problems(1)[0]
    assert verify(env.verifier_record(p, f"#### {p.prompt.rstrip('=')}")).verdict == "fail"
    assert verify(env.verifier_record(p, f"#### {p.answer}")).verdict == "pass"


def test_code_signature_ignores_comments_docstrings_and_layout_but_not_logic():
    from branchrl.envs import load_env

    env = load_env("synth_fn")
    a = "```python\ndef f(x):\n    \"\"\"add one\"\"\"\n    # comment\n    return x+1\n```"
    b = "def f(x):\n  return (x + 1)"
    c = "def f(x):\n    return x + 2"
    assert env.signature(a) == env.signature(b) != env.signature(c)
    assert env.signature("def f(:") == "def f(:"   # unparsable code falls back to normalised text
    assert load_env("arithmetic").signature(" 1+2=3  #### 3\n") == "1+2=3 #### 3"
