"""Math verifier: our extraction, the exact fast path, math-verify in a killable worker, dispatch."""

import json
import os
import subprocess
import sys
import threading

import pytest

from branchrl.verifiers import VERDICTS, VERIFIERS, Result, math_answer, verifier_version, verify, verify_math
from branchrl.verifiers.math_answer.extract import extract_final_answer, normalise
from branchrl.verifiers.math_answer.pool import POOL

SLOW_HANG = r"\boxed{(x+1)^{10000}-(x-1)^{10000}}"  # sympy expands this for minutes


def check(completion, answer, **kwargs):
    return verify_math(completion, answer, **kwargs)


# ------------------------------------------------------------------ extraction
def test_boxed_with_nested_braces():
    text = r"so $x = \boxed{\frac{1}{2}}$ and we are done"
    assert extract_final_answer(text) == r"\frac{1}{2}"
    assert check(text, "0.5").verdict == "pass"


def test_last_boxed_wins_and_escaped_braces_stay_inside():
    assert extract_final_answer(r"try \boxed{3}, no: \boxed{\{1,2\}}") == r"\{1,2\}"


def test_with_several_boxed_the_last_is_the_answer_as_the_math_graders_read_it():
    assert check(r"\boxed{42} so again \boxed{42}", "42").verdict == "pass"
    first_try = r"At first \boxed{43}. Checking again, I made an error: the answer is \boxed{42}."
    assert check(first_try, "42").verdict == "pass"
    result = check(first_try, "43")
    assert result.verdict == "fail" and "'42' != gold '43'" in result.details, result.details
    symbolic = check(r"\boxed{\sqrt{2}} or rather \boxed{\frac{\sqrt{8}}{2}}", r"\sqrt{2}")
    assert symbolic.verdict == "pass" and symbolic.details.startswith("math-verify:"), symbolic.details
    assert check(r"\boxed{\sqrt{8}/2} then \boxed{\sqrt{3}}", r"\sqrt{2}").verdict == "fail"


def test_gsm8k_marker_with_thousands_comma():
    result = check("3 boxes of 411 and 1 more\n#### 1,234", "Some work.\n#### 1234")
    assert result.verdict == "pass", result.details
    assert "'1234'" in result.details


def test_the_answer_is_sentence():
    assert extract_final_answer("Adding up, the answer is 42. Done.") == "42"
    assert check("The answer is 42.", "42").verdict == "pass"
    assert check("The answer is $\\$42$ dollars.", "42").verdict == "pass"


def test_boxed_beats_gsm8k_beats_answer_is():
    assert extract_final_answer("the answer is 1\n#### 2\n\\boxed{3}") == "3"
    assert extract_final_answer("the answer is 1\n#### 2") == "2"


def test_no_final_answer_fails_with_reason():
    result = check("I think it is 42 but I am not sure", "42")
    assert result == Result("fail", 0.0, result.seconds, "no final answer found")
    assert check(r"\boxed{}", "42").details == "no final answer found"


def test_normalise():
    assert normalise(" $1,234$. ") == "1234"
    assert normalise("42 apples") == "42"
    assert normalise(r"1\,000") == "1000"
    assert normalise("2 pi") == "2 pi"  # short words may be maths, so they stay


# ------------------------------------------------------------------ fast path
@pytest.mark.parametrize(
    "pred, gold, verdict",
    [("843", "843", "pass"), ("0.5", "1/2", "pass"), ("844", "843", "fail"), ("-7", "-7", "pass"),
     ("-7", "7", "fail"), ("2.50", "5/2", "pass"), (r"-\frac{3}{4}", "-0.75", "pass"), ("1/3", "0.333", "fail")],
)
def test_fast_path_is_exact(pred, gold, verdict):
    result = check(f"#### {pred}", gold)
    assert result.verdict == verdict, result.details
    assert "math-verify" not in result.details  # decided in-process
    assert result.score == (1.0 if verdict == "pass" else 0.0)


def test_huge_number_is_refused():
    result = check("#### " + "9" * 500, "9")
    assert result.verdict == "fail" and "longer than 100" in result.details
    assert result.seconds < 0.1


# ------------------------------------------------------------------ slow path (math-verify)
@pytest.mark.parametrize(
    "pred, gold, verdict",
    [(r"\frac12", "0.5", "pass"), (r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}", "pass"),
     (r"\sqrt{2}^2", "2", "pass"), (r"2\sqrt{2}", r"\sqrt{8}", "pass"), (r"(x+1)^2", "x^2+2x+1", "pass"),
     (r"\{1,2\}", r"\{2,1\}", "pass"), ("[1,2)", "[1,2)", "pass"), ("[1,2)", "(1,2]", "fail"),
     (r"(-\infty, 3]", r"(-\infty,3]", "pass"), (r"\pi", "3.14159", "fail")],
)
def test_math_verify_cases(pred, gold, verdict):
    result = check(rf"so \boxed{{{pred}}}", gold)
    assert result.verdict == verdict, result.details
    assert result.details.startswith("math-verify:")


def test_symbolic_cases_go_through_math_verify():
    result = check(r"\boxed{\sqrt{2}^2}", "#### 2")
    assert result.verdict == "pass" and result.details.startswith("math-verify:")


def test_hedges_fail_even_though_math_verify_would_accept_a_set():
    for text in ["The answer is 42 or 43.", r"\boxed{42 \text{ or } 43}", "#### either 42 or 43"]:
        result = check(text, "42")
        assert result.verdict == "fail" and "hedged" in result.details, text


def test_timeout_kills_the_worker_and_the_next_call_works():
    result = check(SLOW_HANG, "1", timeout_s=0.5)
    assert result.verdict == "timeout" and result.score == 0.0
    assert 0.5 <= result.seconds < 2.0
    after = check(r"\boxed{\sqrt{8}}", r"2\sqrt{2}")
    assert after.verdict == "pass", after.details


def test_worker_that_died_while_idle_is_replaced():
    assert check(r"\boxed{\sqrt{2}^2}", "2").verdict == "pass"
    os.kill(POOL.workers[0]._proc.pid, 9)
    POOL.workers[0]._proc.wait()
    assert check(r"\boxed{\sqrt{2}^2}", "2").verdict == "pass"


def test_slow_path_is_safe_from_threads():
    cases = [(r"\boxed{\sqrt{2}^2}", "2", "pass"), (r"\boxed{\sqrt{3}}", "2", "fail")] * 4
    results = [None] * len(cases)

    def run(i):
        results[i] = check(cases[i][0], cases[i][1]).verdict

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [c[2] for c in cases]


def test_bad_timeout_is_an_error_verdict():
    assert check(r"\boxed{x}", "x", timeout_s=0).verdict == "error"


# ------------------------------------------------------------------ dispatch and registry
def test_verify_dispatches_records():
    result = verify({"verifier": "math", "completion": "#### 843", "answer": "843", "id": 7})
    assert result.verdict == "pass" and result.to_dict()["score"] == 1.0
    assert set(result.to_dict()) == {"verdict", "score", "seconds", "details"}


@pytest.mark.parametrize(
    "record, words",
    [({"verifier": "nope", "completion": "", "answer": "1"}, ["unknown verifier", "'nope'"]),
     ({"verifier": "math", "completion": "#### 1"}, ["missing", "'answer'"]),
     ({"verifier": "math", "completion": 5, "answer": "1"}, ["'completion'", "str", "int"]),
     ({"verifier": "math", "completion": "#### 1", "answer": "1", "timeout_s": "5"}, ["'timeout_s'"]),
     ({"verifier": "math", "completion": "#### 1", "answer": "1", "timeout_s": True}, ["'timeout_s'", "bool"]),
     ({"completion": "#### 1", "answer": "1"}, ["no 'verifier' field"]),
     (["not", "a", "dict"], ["list"])],
)
def test_bad_records_get_error_verdicts_naming_the_problem(record, words):
    result = verify(record)
    assert result.verdict == "error" and result.score == 0.0
    for word in words:
        assert word in result.details, result.details


def test_registry_and_versions():
    assert "math" in VERIFIERS and verifier_version("math") == math_answer.VERSION == "math-1"
    with pytest.raises(KeyError, match="unknown verifier"):
        verifier_version("nope")
    with pytest.raises(ValueError):
        Result("maybe", 0.0, 0.0, "")
    assert VERDICTS == ("pass", "fail", "timeout", "memory", "error")


def test_package_imports_no_heavy_frameworks():
    code = ("import sys, branchrl.verifiers; heavy = {'torch', 'ray', 'transformers', 'sympy'} & set(sys.modules);"
            "ours = [m for m in sys.modules if m.startswith('branchrl') and not m.startswith('branchrl.verifiers')];"
            "print(sorted(heavy), ours)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] ['branchrl']"  # sympy only ever loads in the worker process


def test_unparseable_answer_fails_but_unparseable_gold_is_an_error():
    result = check("#### \u0663", "3")  # an Arabic-Indic digit: sympy cannot parse it
    assert result.verdict == "fail" and "could not parse extracted" in result.details, result.details
    result = check("#### 3", "\u0663")
    assert result.verdict == "error" and "could not parse gold" in result.details, result.details


def test_numeric_mode_fails_expressions_that_merely_equal_the_answer():
    from branchrl.verifiers import verify

    for text in ["#### 5+5", "#### x=10", "#### 1=10"]:
        assert verify({"verifier": "math", "completion": text, "answer": "10"}).verdict == "pass"  # math-verify's view
        assert verify({"verifier": "math", "completion": text, "answer": "10", "numeric": True}).verdict == "fail"
    assert verify({"verifier": "math", "completion": "#### 10", "answer": "10", "numeric": True}).verdict == "pass"
    assert verify({"verifier": "math", "completion": "#### 10", "answer": "10", "numeric": "yes"}).verdict == "error"


# ------------------------------------------------------------------ the math-verify pool
POOL_SCRIPT = r"""
import json, os, threading
from branchrl.verifiers import configure, verify
from branchrl.verifiers.math_answer.pool import POOL
try:
    os.waitpid(-1, os.WNOHANG)
    children_at_import = True
except ChildProcessError:
    children_at_import = False
workers_at_import = len(POOL.workers)
configure("math", workers=2)
record = {"verifier": "math", "completion": r"\boxed{\sqrt{2}^2}", "answer": "2"}
verdicts = []
threads = [threading.Thread(target=lambda: verdicts.append(verify(record).verdict)) for _ in range(6)]
for t in threads:
    t.start()
for t in threads:
    t.join()
errors = []
for bad in ({"workers": 0}, {"workers": True}, {"workers": "2"}):
    try:
        configure("math", **bad)
    except ValueError as e:
        errors.append(str(e))
try:
    configure("countdown", workers=2)
except ValueError as e:
    errors.append(str(e))
print(json.dumps({"children_at_import": children_at_import, "workers_at_import": workers_at_import,
                  "verdicts": verdicts, "pool": len(POOL.workers),
                  "started": sum(w._proc is not None for w in POOL.workers), "errors": errors}))
"""


def test_import_starts_nothing_and_configure_sizes_the_pool():
    proc = subprocess.run([sys.executable, "-c", POOL_SCRIPT], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["children_at_import"] is False and got["workers_at_import"] == 0
    assert got["verdicts"] == ["pass"] * 6 and got["pool"] == 2 and 1 <= got["started"] <= 2
    assert got["errors"][:3] == ["math verifier workers must be a positive integer, got " + v for v in
                                 ("0", "True", "'2'")]
    assert got["errors"][3] == "verifier 'countdown' has no settings"


def test_a_worker_that_cannot_start_is_an_error_verdict_not_an_exception(monkeypatch):
    from branchrl.verifiers.math_answer.pool import SlowPathWorker

    worker = SlowPathWorker()
    monkeypatch.setattr(worker, "command", lambda: [sys.executable, "-c", "import sys; sys.exit(3)"])
    result = worker.compare("2", r"\sqrt{2}^2", timeout_s=5)
    assert result.verdict == "error" and "did not start (exit code 3)" in result.details
    worker.close()
