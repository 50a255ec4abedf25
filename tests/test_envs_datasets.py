"""Data-set environments (gsm8k, math, humaneval, mbpp) and the procedural synth_fn: they load from the
fixtures, their splits never overlap, their records are in the verifier's format, and gold solutions pass.

Tests that read the full data sets in ../shared/data skip when it is absent; code solutions run
through `python_tests` only when that verifier is registered.
"""

import gzip
import json
import re
from pathlib import Path

import pytest

from branchrl.envs import EnvError, load_env
from branchrl.envs.datafile import DatasetEnvironment
from branchrl.envs.synth_fn import SynthFn
from branchrl.verifiers import verify

FIXTURES = Path(__file__).parent / "fixtures" / "data"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATA_ENVS = {"gsm8k": "gsm8k", "math": "math500", "humaneval": "humaneval", "mbpp": "mbpp"}
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"full data sets not found at {SHARED}")


@pytest.fixture(scope="module", params=sorted(DATA_ENVS))
def data_env(request):
    return load_env(request.param, path=str(FIXTURES / DATA_ENVS[request.param]))


def all_problems(env):
    return [p for name in ("eval", "warm_start", "train") for p in env.splits[name]]


# ------------------------------------------------------------------ loading and splits (all data envs)
def test_every_split_is_non_empty_and_they_never_overlap(data_env):
    sizes = {name: len(problems) for name, problems in data_env.splits.items()}
    assert all(sizes.values()), sizes
    evals = {p.id for p in data_env.eval_problems(sizes["eval"])}
    warm = {p.id for s in range(5) for p in data_env.warm_start_problems(sizes["warm_start"], s)}
    train = {p.id for s in range(5) for p in data_env.train_problems(sizes["train"], s)}
    assert not evals & warm and not evals & train and not warm & train
    assert len(evals) + len(warm) + len(train) == sum(sizes.values())
    prompts = {name: {p.prompt for p in ps} for name, ps in data_env.splits.items()}
    assert not prompts["eval"] & (prompts["train"] | prompts["warm_start"])


def test_sampling_is_seeded_distinct_and_eval_is_a_fixed_prefix(data_env):
    n = len(data_env.splits["train"])
    a, b = data_env.train_problems(n - 1, seed=1), data_env.train_problems(n - 1, seed=1)
    assert a == b and len({p.id for p in a}) == n - 1
    assert [p.id for p in data_env.train_problems(n, 1)] != [p.id for p in data_env.train_problems(n, 2)]
    assert data_env.eval_problems(2) == data_env.eval_problems(3)[:2]


def test_asking_for_more_than_a_split_holds_is_an_env_error(data_env):
    held = len(data_env.splits["train"])
    with pytest.raises(EnvError, match=rf"env '{data_env.name}': the train split holds {held} problems, asked for 99"):
        data_env.train_problems(99, seed=0)


def test_gsm8k_uses_the_test_file_as_eval_and_hashes_train():
    env = load_env("gsm8k", path=str(FIXTURES / "gsm8k"))
    test_questions = [json.loads(line)["question"] for line in (FIXTURES / "gsm8k" / "test.jsonl").open()]
    assert [p.id for p in env.eval_problems(20)] == [f"test/{i}" for i in range(20)]
    assert all(q in p.prompt for q, p in zip(test_questions, env.eval_problems(20)))
    assert all(p.id.startswith("train/") for p in env.splits["train"] + env.splits["warm_start"])
    # a single file has no test split: everything is hashed, eval_percent applies
    single = load_env("gsm8k", path=str(FIXTURES / "gsm8k" / "train.jsonl"), eval_percent=50)
    assert {len(single.splits[s]) > 0 for s in ("eval", "warm_start", "train")} == {True}


def test_percentages_move_problems_between_splits():
    everything = load_env("humaneval", path=str(FIXTURES / "humaneval"), eval_percent=100, warm_start_percent=0)
    assert len(everything.eval_problems(10)) == 10 and not everything.splits["train"]


@pytest.mark.parametrize("kwargs, message", [
    ({"eval_percent": 101}, "eval_percent must be an integer in 0..100, got 101"),
    ({"warm_start_percent": "10"}, "warm_start_percent must be an integer in 0..100, got '10'"),
    ({"eval_percent": 60, "warm_start_percent": 50}, "eval_percent + warm_start_percent must be at most 100"),
    ({"path": "/no/such/file.jsonl"}, "path '/no/such/file.jsonl' does not exist"),
])
def test_bad_arguments_are_clear_errors(kwargs, message):
    with pytest.raises(EnvError) as info:
        load_env("mbpp", **{"path": str(FIXTURES / "mbpp"), **kwargs})
    assert str(info.value).startswith(f"env 'mbpp': {message}")


def test_bad_files_name_the_problem(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"question": "q", "answer": "#### 1"}\nnot json\n')
    with pytest.raises(EnvError, match=r"bad.jsonl:2: not JSON"):
        load_env("gsm8k", path=str(tmp_path / "bad.jsonl"))
    (tmp_path / "nofield.jsonl").write_text('{"question": "q"}\n')
    with pytest.raises(EnvError, match=r"gsm8k all record 0: record has no 'answer' field"):
        load_env("gsm8k", path=str(tmp_path / "nofield.jsonl"))
    (tmp_path / "noanswer.jsonl").write_text('{"question": "q", "answer": "it is 4"}\n')
    with pytest.raises(EnvError, match=r"GSM8K answer has no '#### <number>' line: 'it is 4'"):
        load_env("gsm8k", path=str(tmp_path / "noanswer.jsonl"))


def test_gzip_parquet_and_json_files_load_the_same_problems(tmp_path):
    records = [json.loads(line) for line in (FIXTURES / "humaneval" / "HumanEval.jsonl").open()]
    with gzip.open(tmp_path / "he.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    (tmp_path / "he.json").write_text(json.dumps(records))
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "he.parquet")
    ref = load_env("humaneval", path=str(FIXTURES / "humaneval"))
    for name in ("he.jsonl.gz", "he.json", "he.parquet"):
        assert load_env("humaneval", path=str(tmp_path / name)).splits == ref.splits, name


def test_no_path_loads_the_hub_data_set_through_datasets(monkeypatch):
    import datasets
    calls = []

    def fake_load_dataset(name, config=None):
        calls.append((name, config))
        rows = [json.loads(line) for line in (FIXTURES / "gsm8k" / "train.jsonl").open()]
        return datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                                     "test": datasets.Dataset.from_list(rows[:3])})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    env = load_env("gsm8k")
    assert calls == [("openai/gsm8k", "main")] and len(env.eval_problems(3)) == 3
    assert not {p.prompt for p in env.eval_problems(3)} & {p.prompt for p in env.splits["train"]}

    def offline(name, config=None):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(EnvError, match=r"could not load 'HuggingFaceH4/MATH-500' from the hub .*pass path="):
        load_env("math")


# ------------------------------------------------------------------ records and gold solutions
def test_math_envs_gold_solutions_pass_and_wrong_answers_fail():
    for name in ("gsm8k", "math"):
        env = load_env(name, path=str(FIXTURES / DATA_ENVS[name]))
        for p in all_problems(env):
            record = env.verifier_record(p, p.solution)
            assert record["verifier"] == "math" and record["answer"] == p.answer and p.answer
            assert verify(record).verdict == "pass", (p.id, verify(record))
            assert verify(env.verifier_record(p, "#### 123456789")).verdict == "fail"


def test_gsm8k_record_is_numeric_and_the_prompt_asks_for_hashes():
    env = load_env("gsm8k", path=str(FIXTURES / "gsm8k"))
    p = env.eval_problems(1)[0]
    assert p.answer == "18" and "#### <answer>" in p.prompt
    assert env.verifier_record(p, "x") == {"verifier": "math", "completion": "x", "answer": "18", "numeric": True}


def test_math_answer_field_wins_and_boxed_is_the_fallback(tmp_path):
    rows = [{"problem": "1+1?", "solution": "It is \\boxed{2}.", "unique_id": "a"},
            {"problem": "half?", "solution": "\\boxed{\\frac{1}{2}}", "answer": "\\frac12"}]
    (tmp_path / "m.jsonl").write_text("\n".join(map(json.dumps, rows)))
    env = load_env("math", path=str(tmp_path / "m.jsonl"), eval_percent=100, warm_start_percent=0)
    assert {(p.id, p.answer) for p in env.eval_problems(2)} == {("a", "2"), ("all/1", "\\frac12")}
    assert all("\\boxed{}" in p.prompt for p in env.eval_problems(2))


def code_of(solution):
    return re.fullmatch(r"```python\n(.*)\n```", solution, re.DOTALL).group(1)


def test_humaneval_records_carry_the_check_code_and_entry_point():
    env = load_env("humaneval", path=str(FIXTURES / "humaneval"))
    for p in all_problems(env):
        record = env.verifier_record(p, p.solution)
        assert set(record) == {"verifier", "completion", "tests", "entry_point"}
        assert record["verifier"] == "python_tests"
        assert "def check(candidate)" in record["tests"] and f"def {record['entry_point']}(" in code_of(p.solution)
        assert p.id.startswith("HumanEval/") and p.prompt.count("```python") == 2  # the instruction and the stub


def test_mbpp_records_carry_all_asserts_and_the_prompt_shows_one():
    env = load_env("mbpp", path=str(FIXTURES / "mbpp"))
    for p in all_problems(env):
        record = env.verifier_record(p, p.solution)
        assert set(record) == {"verifier", "completion", "tests"} and record["verifier"] == "python_tests"
        asserts = record["tests"].splitlines()
        assert len(asserts) >= 3 and all(a.startswith("assert ") for a in asserts)
        assert asserts[0] in p.prompt and asserts[-1] not in p.prompt and "\r" not in p.solution


def own_run(problem):
    """Run a reference solution against its tests in this process: for our own data only, never model output."""
    namespace: dict = {}
    exec(code_of(problem.solution) + "\n" + problem.extras["tests"], namespace)
    if "entry_point" in problem.extras:
        namespace["check"](namespace[problem.extras["entry_point"]])


def test_fixture_reference_solutions_pass_their_own_tests_in_process():
    """The records are right even before python_tests exists: canonical code + tests run clean here."""
    for name in ("humaneval", "mbpp"):
        for p in all_problems(load_env(name, path=str(FIXTURES / name))):
            own_run(p)


@pytest.mark.parametrize("name", ["humaneval", "mbpp"])
def test_canonical_solutions_pass_the_python_tests_verifier(name):
    env = load_env(name, path=str(FIXTURES / name))
    for p in all_problems(env):
        result = verify(env.verifier_record(p, p.solution))
        assert result.verdict == "pass", (p.id, result)


# ------------------------------------------------------------------ synth_fn
@pytest.fixture(scope="module")
def synth():
    return load_env("synth_fn")


def test_synth_fn_splits_never_overlap(synth):
    evals = {p.id for p in synth.eval_problems(100)}
    warm = {p.id for s in (0, 1) for p in synth.warm_start_problems(100, s)}
    train = {p.id for s in (0, 1) for p in synth.train_problems(300, s)}
    assert not evals & warm and not evals & train and not warm & train
    assert {synth.split_of(i) for i in evals} == {"eval"} and {synth.split_of(i) for i in warm} == {"warm_start"}
    assert synth.train_problems(30, seed=4) == SynthFn().train_problems(30, seed=4)
    assert synth.eval_problems(10) == synth.eval_problems(40)[:10]


def test_synth_fn_records_and_worked_solutions(synth):
    for p in synth.warm_start_problems(100, seed=0) + synth.eval_problems(20):
        record = synth.verifier_record(p, p.solution)
        assert set(record) == {"verifier", "completion", "tests"} and record["verifier"] == "python_tests"
        tests = record["tests"].splitlines()
        assert len(tests) == 5 and all(t.startswith("assert f(") for t in tests)
        shown = [line for line in p.prompt.splitlines() if line.startswith("f(")]
        assert len(shown) == 4 and not {t.removeprefix("assert ") for t in tests} & set(shown)
        assert code_of(p.solution).splitlines()[0][4:-1] in p.prompt  # the signature is shown
        own_run(p)


def test_synth_fn_example_problem_is_readable():
    p = SynthFn().problem("list:sort|map_mul_3|sum")
    assert code_of(p.solution) == ("def f(x: list[int]) -> int:\n    x = sorted(x)\n"
                                   "    x = [v * 3 for v in x]\n    return sum(x)")
    assert "`f(x: list[int]) -> int`" in p.prompt


@pytest.mark.parametrize("kwargs, message", [
    ({"max_ops": 0}, "max_ops must be an integer in 1..4, got 0"),
    ({"n_tests": 2.0}, "n_tests must be an integer in 1..20, got 2.0"),
])
def test_synth_fn_bad_arguments(kwargs, message):
    with pytest.raises(EnvError) as info:
        load_env("synth_fn", **kwargs)
    assert str(info.value) == f"env 'synth_fn': {message}"


def test_synth_fn_worked_solutions_pass_the_python_tests_verifier(synth):
    for p in synth.warm_start_problems(20, seed=0):
        result = verify(synth.verifier_record(p, p.solution))
        assert result.verdict == "pass", (p.id, result)


# ------------------------------------------------------------------ the full data sets, when present
@needs_shared
def test_full_data_sets_load_with_the_documented_sizes():
    sizes = {"gsm8k": 1319 + 7473, "humaneval": 164, "mbpp": 419, "math": 500}
    paths = {"gsm8k": SHARED / "gsm8k", "humaneval": SHARED / "humaneval",
             "mbpp": SHARED / "mbpp", "math": SHARED / "math500"}
    for name, path in paths.items():
        env = load_env(name, path=str(path))
        assert isinstance(env, DatasetEnvironment)
        total = sum(len(ps) for ps in env.splits.values())
        # duplicates of eval questions are dropped from train (GSM8K has none across its splits)
        assert sizes[name] - 5 <= total <= sizes[name], (name, total)
        assert 0.1 * total <= len(env.splits["eval"]) <= 0.3 * total or name == "gsm8k", (name, len(env.splits["eval"]))


@needs_shared
def test_all_gsm8k_test_gold_answers_pass_the_math_verifier():
    env = load_env("gsm8k", path=str(SHARED / "gsm8k"))
    failures = [p.id for p in env.eval_problems(1319) if verify(env.verifier_record(p, p.solution)).verdict != "pass"]
    assert not failures, failures[:5]
