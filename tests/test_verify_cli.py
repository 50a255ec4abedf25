"""`branchrl verify`: JSONL in, the same records plus verdicts out; bad lines become error lines."""

import io
import json
import sys

import pytest

from branchrl.verifiers import main_verify


def run(path):
    out = io.StringIO()
    assert main_verify(str(path), out=out) == 0
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_three_lines_pass_fail_and_invalid_json(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(
        json.dumps({"verifier": "math", "completion": r"so \boxed{843}", "answer": "#### 843", "id": "a"}) + "\n"
        + json.dumps({"verifier": "math", "completion": "#### 844", "answer": "843", "id": "b"}) + "\n"
        + "{not json\n"
    )
    rows = run(path)
    assert [r["verdict"] for r in rows] == ["pass", "fail", "error"]
    assert rows[0]["id"] == "a" and rows[0]["score"] == 1.0 and rows[0]["completion"] == r"so \boxed{843}"
    assert rows[1]["score"] == 0.0 and "844" in rows[1]["details"]
    assert rows[2]["line"] == 3 and rows[2]["details"].startswith("line 3: invalid JSON")
    assert all(set(r) >= {"verdict", "score", "seconds", "details"} for r in rows)


def test_non_object_lines_and_bad_records_keep_going(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('[1, 2]\n\n{"verifier": "nope"}\n{"verifier": "math", "completion": "#### 1", "answer": "1"}\n')
    rows = run(path)
    assert [r["verdict"] for r in rows] == ["error", "error", "pass"]
    assert rows[0] == {"line": 1, "verdict": "error", "score": 0.0, "seconds": 0.0,
                       "details": "line 1: not a JSON object but a list"}
    assert rows[1]["verifier"] == "nope" and "unknown verifier" in rows[1]["details"]


def test_stdin_dash(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"verifier": "math", "completion": "#### 2", "answer": "2"}\n'))
    out = io.StringIO()
    assert main_verify("-", out=out) == 0
    assert json.loads(out.getvalue())["verdict"] == "pass"


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        main_verify(str(tmp_path / "missing.jsonl"), out=io.StringIO())


def test_summary_counts_each_verdict_and_jobs_keep_input_order(tmp_path):
    path = tmp_path / "in.jsonl"
    records = [{"verifier": "math", "completion": f"#### {i}", "answer": str(i if i % 3 else -1), "id": i}
               for i in range(30)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "oops\n")
    out, summary = io.StringIO(), io.StringIO()
    assert main_verify(str(path), out=out, jobs=4, summary=summary) == 0
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r.get("id") for r in rows[:-1]] == list(range(30)) and rows[-1]["line"] == 31
    assert summary.getvalue().startswith("verified 31 records in ")
    assert summary.getvalue().rstrip().endswith(": pass 20, fail 10, error 1")


def test_python_tests_records_reuse_one_warm_sandbox_per_job(tmp_path, monkeypatch):
    from branchrl.verifiers import warm_sandbox

    starts = []
    start = warm_sandbox.start_sandboxed
    monkeypatch.setattr(warm_sandbox, "start_sandboxed", lambda *a, **kw: starts.append(1) or start(*a, **kw))
    warm_sandbox.SANDBOXES.close()
    path = tmp_path / "code.jsonl"
    records = [{"verifier": "python_tests", "completion": "def f(x):\n    return x + 1\n",
                "tests": f"assert f({i}) == {i + 1 if i % 2 else i}", "id": i} for i in range(16)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    out, summary = io.StringIO(), io.StringIO()
    assert main_verify(str(path), out=out, jobs=2, summary=summary) == 0
    assert summary.getvalue().rstrip().endswith(": pass 8, fail 8")
    assert 1 <= len(starts) <= 2, f"{len(starts)} sandboxes started for 16 records on 2 jobs"
