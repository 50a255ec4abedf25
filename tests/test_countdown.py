"""Countdown: the verifier accepts exactly the expressions that hit the target with the given numbers;
the env's problems are solvable, split-disjoint and their worked solutions pass."""

import pytest

from branchrl.envs import EnvError, load_env
from branchrl.envs.countdown import Countdown, solve, split_of
from branchrl.verifiers import VERIFIERS, verify
from branchrl.verifiers.countdown import extract_expression, verify_countdown

NUMBERS = [25, 5, 4, 3]


def check(completion, numbers=NUMBERS, target=80, **kw):
    return verify({"verifier": "countdown", "completion": completion, "numbers": numbers, "target": target, **kw})


# ------------------------------------------------------------------ verifier
@pytest.mark.parametrize("completion", [
    "#### (25-5)*4", "#### (25 - 5) * 4 = 80", "<answer>4*(25-5)</answer>", "25-5=20, 20*4=80\n#### (25-5)*4\n",
])
def test_right_expressions_pass(completion):
    result = check(completion)
    assert result.verdict == "pass" and result.score == 1.0, result


def test_exact_fractions_and_repeated_numbers():
    assert check("#### 7/2*2", numbers=[7, 2, 2], target=7).verdict == "pass"
    assert check("#### 3+3", numbers=[3, 3, 9], target=6).verdict == "pass"  # a number given twice, used twice
    assert check("#### 10/4*4", numbers=[10, 4, 4], target=10).verdict == "pass"  # 5/2 mid-way is fine


@pytest.mark.parametrize("completion, reason", [
    ("#### 25*4-5*4", "uses [4] beyond"),             # 4 used twice, given once
    ("#### 25*3+4", "= 79, not 80"),                   # wrong value
    ("#### 80", "uses [80] beyond"),                  # a number not given
    ("#### (25-5)*4 = 81", "claims '81'"),
    ("#### 25**1*4-20", "found"),                     # power is not allowed
    ("#### -5+25*4-15", "found UnaryOp"),
    ("#### __import__('os').system('x')", "found Call"),
    ("#### 25*(5-5)/0", "division by zero"),
    ("#### (25-5)*4 == 80", "found Compare"),
    ("#### 2.5*4*8", "found Constant"),               # float literal
    ("#### True*80", "found Constant"),
    ("#### 25 5 4", "not an arithmetic expression"),
    ("#### " + "(" * 150 + "4" + ")" * 150, "longer than 200"),
    ("the answer is 80", "no answer found"),
    ("####", "empty expression"),
])
def test_wrong_or_unsafe_expressions_fail_with_a_reason(completion, reason):
    result = check(completion)
    assert result.verdict == "fail" and result.score == 0.0 and reason in result.details, result


def test_last_answer_wins_and_tags_beat_hash_lines():
    assert extract_expression("<answer>1+1</answer> <answer>2+2</answer>\n#### 3+3") == "2+2"
    assert extract_expression("#### 1\n#### (25-5)*4") == "(25-5)*4"
    assert check("#### 25*3\n#### (25-5)*4").verdict == "pass"


def test_use_all_requires_every_number():
    assert check("#### (25-5)*4", use_all=True).verdict == "fail"
    assert "leaves [3] unused" in check("#### (25-5)*4", use_all=True).details
    assert check("#### (25-5)*4*1", numbers=[25, 5, 4, 1], use_all=True).verdict == "pass"


def test_bad_records_are_errors_not_fails():
    assert verify_countdown("#### 1+1", ["1", 1], 2).verdict == "error"
    assert check("#### 1+1", numbers="1 1").verdict == "error"  # registry type check
    assert check("#### 1+1", target=2.0).verdict == "error"
    assert check("#### 1+1", use_all="yes").verdict == "error"
    assert VERIFIERS["countdown"].version == "countdown-1"


# ------------------------------------------------------------------ environment
@pytest.fixture(scope="module")
def env():
    return load_env("countdown")


def test_worked_solutions_pass_and_a_wrong_target_fails(env):
    problems = env.warm_start_problems(100, seed=0) + env.train_problems(50, seed=1) + env.eval_problems(20)
    for p in problems:
        record = env.verifier_record(p, p.solution)
        assert record["verifier"] == "countdown" and record["numbers"] == p.extras["numbers"]
        assert verify(record).verdict == "pass", (p, verify(record))
        assert verify({**record, "target": record["target"] + 1}).verdict == "fail"
        assert p.id == f"{','.join(map(str, record['numbers']))}={record['target']}"
        assert len(record["numbers"]) == 4 and all(1 <= n <= 99 for n in record["numbers"])
        assert 1 <= record["target"] <= 100 and record["target"] not in record["numbers"]


def test_use_all_env_solutions_use_every_number():
    env = load_env("countdown", count=3, max_number=20, use_all=True)
    for p in env.train_problems(50, seed=0):
        record = env.verifier_record(p, p.solution)
        assert record["use_all"] is True and verify(record).verdict == "pass", p
        assert "exactly once" in p.prompt


def test_splits_never_overlap_and_reorderings_share_a_split(env):
    evals = {p.id for p in env.eval_problems(200)}
    warm = {p.id for s in (0, 1) for p in env.warm_start_problems(200, s)}
    train = {p.id for s in (0, 1) for p in env.train_problems(500, s)}
    assert not evals & warm and not evals & train and not warm & train
    assert {split_of(i) for i in evals} == {"eval"} and {split_of(i) for i in train} == {"train"}
    assert split_of("25,5,4,3=80") == split_of("3,4,5,25=80")


def test_same_seed_same_problems(env):
    assert env.train_problems(20, seed=3) == Countdown().train_problems(20, seed=3)
    assert env.eval_problems(10) == env.eval_problems(30)[:10]
    assert env.train_problems(20, seed=3) != env.train_problems(20, seed=4)


def test_solver_finds_the_short_way_and_says_when_there_is_none():
    assert solve([25, 5, 4, 3], 80, use_all=False) is not None
    assert solve([1, 1], 7, use_all=False) is None
    expression, steps = solve([6, 2], 3, use_all=True)
    assert expression == "6/2" and steps == ["6/2=3"]


@pytest.mark.parametrize("kwargs, message", [
    ({"count": 1}, "count must be an integer in 2..5, got 1"),
    ({"count": 6}, "count must be an integer in 2..5, got 6"),
    ({"max_number": True}, "max_number must be an integer in 2..10000, got True"),
    ({"use_all": "no"}, "use_all must be true or false, got 'no'"),
])
def test_bad_arguments_are_clear_errors(kwargs, message):
    with pytest.raises(EnvError) as info:
        load_env("countdown", **kwargs)
    assert str(info.value) == f"env 'countdown': {message}"


def test_too_many_problems_for_a_tiny_space_is_an_env_error():
    with pytest.raises(EnvError, match="found only .* distinct eval problems, asked for 500"):
        load_env("countdown", count=2, max_number=5, max_target=10).eval_problems(500)
