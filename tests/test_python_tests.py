"""python_tests verifier: correct code passes, partial credit, io tests, syntax errors, HumanEval check."""

import logging

import pytest

from branchrl.verifiers import VERIFIERS, sandbox, verify
from branchrl.verifiers.python_tests import extract_code, run_python_tests, verify_python_tests
from branchrl.verifiers.warm_sandbox import SANDBOXES

ADD = "```python\ndef add(a, b):\n    return a + b\n```"


def test_correct_function_passes_with_score_one():
    result = verify_python_tests(ADD, "assert add(1, 2) == 3\nassert add(-1, 1) == 0")
    assert (result.verdict, result.score) == ("pass", 1.0), result.details
    assert result.details.startswith("2/2 tests passed") and "ms" in result.details


def test_partial_credit_two_of_four():
    code = "def f(x):\n    return x * 2\n"
    tests = "assert f(1) == 2\nassert f(2) == 5\nassert f(3) == 6\nassert f(4) == 7\n"
    result, outcomes = run_python_tests(code, tests)
    assert (result.verdict, result.score) == ("fail", 0.5), result.details
    assert [o.outcome for o in outcomes] == ["pass", "fail", "pass", "fail"]
    assert [o.line for o in outcomes] == [1, 2, 3, 4]
    assert all(o.seconds >= 0 for o in outcomes)


def test_stdin_stdout_cases():
    program = "a, b = map(int, input().split())\nprint(a + b)\n"
    io = [{"stdin": "1 2\n", "stdout": "3\n"}, {"stdin": "5 5", "stdout": "10"}]
    assert verify_python_tests(program, io=io).verdict == "pass"
    io.append({"stdin": "2 2\n", "stdout": "5\n"})
    result = verify_python_tests(program, io=io)
    assert result.verdict == "fail" and result.score == pytest.approx(2 / 3)
    assert "'4\\n' != expected '5\\n'" in result.details


def test_syntax_error_fails_with_diagnostic():
    result = verify_python_tests("def add(a, b) return a + b", "assert add(1, 2) == 3")
    assert (result.verdict, result.score) == ("fail", 0.0)
    assert "SyntaxError" in result.details and "line 1" in result.details


def test_humaneval_check_with_entry_point():
    tests = (
        "METADATA = {}\n\ndef check(candidate):\n"
        "    assert candidate([1, 2, 3]) == 6\n"
        "    assert abs(candidate([0.5]) - 0.5) < 1e-9\n"
        "    for n in range(5):\n        assert candidate(list(range(n))) == n * (n - 1) // 2\n"
    )
    completion = "Here you go:\n```python\ndef total(xs):\n    return sum(xs)\n```\nDone."
    result = verify({"verifier": "python_tests", "completion": completion, "tests": tests, "entry_point": "total"})
    assert (result.verdict, result.score) == ("pass", 1.0), result.details
    wrong = verify_python_tests("def total(xs):\n    return None", tests, entry_point="total")
    assert (wrong.verdict, wrong.score) == ("fail", 0.0)


def test_exceptions_generators_and_helpers_cross_the_boundary():
    code = (
        "def evens(n):\n    return (i for i in range(n) if i % 2 == 0)\n"
        "def boom(x):\n    raise ValueError('no')\n"
        "class Pair:\n    def __init__(self, a, b):\n        self.a, self.b = a, b\n"
        "def first(p):\n    return p.a\n"
    )
    tests = (
        "assert list(evens(5)) == [0, 2, 4]\n"
        "try:\n    boom(1)\n    assert False\nexcept ValueError:\n    pass\n"
        "assert first(Pair(3, 4)) == 3\n"
        "assert Pair(1, 2).b == 2\n"
    )
    result = verify_python_tests(code, tests)
    assert result.verdict == "pass", result.details


def test_registry_entry_and_bad_records():
    assert VERIFIERS["python_tests"].version.startswith("python_tests-")
    assert verify({"verifier": "python_tests", "completion": ADD}).verdict == "error"
    bad_io = verify({"verifier": "python_tests", "completion": "print(1)", "io": [{"stdin": 1}]})
    assert bad_io.verdict == "error" and "io[0]" in bad_io.details


def test_extract_code_prefers_the_block_defining_the_entry_point():
    text = "```python\ndef f():\n    return 1\n```\nusage:\n```python\nprint(f())\n```"
    assert extract_code(text, "f").startswith("def f")
    assert extract_code(text) == "print(f())\n"
    assert extract_code("def g(): pass") == "def g(): pass"


def test_fallback_without_bwrap_still_runs_and_warns_once(monkeypatch, caplog):
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    sandbox.bwrap_path.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger=sandbox.__name__):
            assert verify_python_tests(ADD, "assert add(2, 2) == 4").verdict == "pass"
            served = _sandbox_pids()
            looping = verify_python_tests("def add(a, b):\n    while True: pass", "assert add(1, 1) == 2", timeout_s=1)
            assert looping.verdict == "timeout"
            assert verify_python_tests(ADD, "assert add(2, 2) == 5").verdict == "fail"
            assert _sandbox_pids() == served  # the rlimits-only sandbox is kept warm too
        warnings = [r for r in caplog.records if "isolation" in r.getMessage() or "WITHOUT" in r.getMessage()]
        assert len(warnings) == 1
    finally:
        monkeypatch.undo()
        sandbox.bwrap_path.cache_clear()
    assert verify_python_tests(ADD, "assert add(2, 2) == 4").verdict == "pass"
    if sandbox.bwrap_path():  # back under bwrap: a new sandbox, not the rlimits-only one
        assert _sandbox_pids().isdisjoint(served)


def _sandbox_pids() -> set[int]:
    return {box.proc.pid for box in SANDBOXES.sandboxes() if box.proc is not None}


def test_builtin_subclass_results_compare_by_content_and_cycles_end():
    code = (
        "import collections\n"
        "def freq(xs):\n    return collections.Counter(xs)\n"
        "P = collections.namedtuple('P', 'x y')\n"
        "def point():\n    return [P(1, 2), collections.OrderedDict(a=1), collections.defaultdict(int, b=2)]\n"
        "class Big(int):\n    def __eq__(self, other):\n        return True\n"
        "def big():\n    return Big(7)\n"
        "def loop():\n    a = []\n    a.append(a)\n    return a\n"
        "def deep():\n    a = []\n    for _ in range(10000):\n        a = [a]\n    return a\n"
    )
    tests = (
        "assert freq([1, 1, 2]) == {1: 2, 2: 1}\n"
        "assert point() == [(1, 2), {'a': 1}, {'b': 2}]\n"
        "assert big() == 7\n"
        "assert big() == 8\n"
        "assert loop() == [[]]\n"
        "assert deep() == []\n"
    )
    result, outcomes = run_python_tests(code, tests)
    assert [o.outcome for o in outcomes] == ["pass", "pass", "pass", "fail", "fail", "fail"], result.details
    assert "self-referencing" in outcomes[4].message and "nested" in outcomes[5].message


def test_candidate_top_level_name_shadows_a_builtin_only_as_the_function_under_test():
    code = "def sum(a, b):\n    return a * b\n"
    assert verify_python_tests(code, "assert sum(3, 4) == 12\nassert sum(2, 5) == 10").verdict == "pass"
    cheat = "def abs(x):\n    return 0\ndef f(x):\n    return 'wrong'\n"
    assert verify_python_tests(cheat, "assert abs(f(1) - 2) < 1e-9").score == 0.0


def test_test_setup_sets_attributes_on_candidate_objects_and_passes_them_back():
    code = (
        "class Node:\n    def __init__(self, v):\n        self.v, self.left, self.right = v, None, None\n"
        "def height(n):\n    return 0 if n is None else 1 + max(height(n.left), height(n.right))\n"
        "def values(ns):\n    return [n.v for n in ns[0]]\n"
    )
    tests = (
        "root = Node(1)\nroot.left = Node(2)\nroot.left.left = Node(3)\nroot.right = Node(4)\n"
        "assert height(root) == 3\n"
        "assert root.left.left.v == 3\n"
        "assert values(((root, root.right),)) == [1, 4]\n"
    )
    result = verify_python_tests(code, tests)
    assert result.verdict == "pass", result.details


def test_a_worker_that_dies_in_one_test_is_replaced_for_the_next():
    code = "import os\ndef f(x):\n    if x == 1:\n        os._exit(0)\n    while x == 2:\n        pass\n    return x\n"
    result, outcomes = run_python_tests(code, "assert f(1) == 1\nassert f(3) == 3\nassert f(2) == 2\nassert f(4) == 4",
                                        timeout_s=1)
    assert [o.outcome for o in outcomes] == ["fail", "pass", "timeout", "timeout"], result.details
