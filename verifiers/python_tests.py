"""`python_tests` verifier: run model-written Python against tests in the sandbox; the harness judges.

Record fields: `completion` (code in a ```python fence, or plain code), `tests` (assert lines, or a
HumanEval-style `def check(candidate)` together with `entry_point`), optional `io` (a list of
{"stdin", "stdout"} cases for whole programs), optional `timeout_s` (the budget of the whole record).

How a pass is proven (details in harness/): the test code runs in a trusted harness process
inside the sandbox and calls the candidate's functions in a separate worker process; only exact
plain-data values come back (an object whose __eq__ is always True is never compared), and the
harness writes per-test outcomes plus a fresh random nonce to a pipe the candidate cannot reach.
Exit codes and printed text mean nothing. The tests reach the harness only after the candidate's
processes were forked, so the candidate cannot read the expected values either. Each record gets a
fresh fork of the harness inside a warm sandbox (warm_sandbox.py) that is wiped between records.

Verdicts: "pass" when every test passes (score 1.0); otherwise the score is the fraction of tests
passed and the verdict is "timeout" (a test ran out of time), "memory" (hit the memory limit), or
"fail"; "error" only for our own problems (bad record, sandbox could not start, harness crash).
`code_signature` is this verifier's de-duplication signature: two programs that differ only in
comments, docstrings or layout are the same sample.

Deliberately not here: third-party packages inside the sandbox (standard library only), comparing
mutated arguments, or any reward shaping.
"""

import ast
import json
import re
import secrets
import time
from dataclasses import dataclass

from .result import Result, failed
from .sandbox import STDERR_TAIL_BYTES, WORKDIR, Completed, Limits
from .warm_sandbox import SANDBOXES, SandboxUnavailable

VERSION = "python_tests-2"  # bump when extraction, harness or verdict semantics change
DEFAULT_TIMEOUT_S = 5.0
MAX_TIMEOUT_S = 60.0
HARNESS_GRACE_S = 2.0  # the harness's fork, set-up and the clean-up after it, on top of the record's timeout_s
LIMITS = Limits()
MAX_DETAILS_CHARS = 2000  # `details` is cut to this length (with "...") so a data-set row stays small
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_HEADER_BYTES = 4


@dataclass(frozen=True)
class TestOutcome:
    line: int  # line in `tests` (0 for io cases)
    test: str  # the statement, shortened
    outcome: str  # pass | fail | timeout | memory
    seconds: float
    message: str


def extract_code(completion: str, entry_point: str | None = None) -> str:
    """The last fenced code block (the last one defining `entry_point` if given), else the whole text."""
    blocks = _FENCE.findall(completion)
    if not blocks:
        return completion
    if entry_point:
        defining = [b for b in blocks if re.search(rf"\bdef\s+{re.escape(entry_point)}\s*\(", b)]
        if defining:
            return defining[-1]
    return blocks[-1]


def code_signature(completion: str) -> str:
    """The program in a completion (as `extract_code` finds it) unparsed from its AST without
    docstrings: equal for copies that differ only in comments, quotes or layout. Unparsable code
    falls back to whitespace-normalised text."""
    code = extract_code(completion)
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return " ".join(code.split())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and _is_docstring(body[0]):
            node.body = body[1:] or [ast.Pass()]
    try:
        return ast.unparse(tree)
    except RecursionError:  # deeply nested model output: still a signature, just not a normalised one
        return " ".join(code.split())


def _is_docstring(statement: ast.stmt) -> bool:
    return isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant) and isinstance(
        statement.value.value, str)


def verify_python_tests(completion: str, tests: str = "", io: list | None = None, entry_point: str | None = None,
                        timeout_s: float = DEFAULT_TIMEOUT_S) -> Result:
    """Check one completion; never raises for anything the candidate does."""
    start = time.monotonic()
    result, _ = run_python_tests(completion, tests, io, entry_point, timeout_s)
    return result.with_seconds(time.monotonic() - start)


def run_python_tests(completion: str, tests: str = "", io: list | None = None, entry_point: str | None = None,
                     timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[Result, list[TestOutcome]]:
    """The `Result` plus the structured per-test outcomes (what `details` summarises)."""
    problem = _check_fields(tests, io, timeout_s)
    if problem:
        return failed("error", problem), []
    code = extract_code(completion, entry_point)
    nonce = secrets.token_hex(16)
    first = {"code": code, "limits": _harness_limits(timeout_s)}
    job = {"tests": tests, "io": io or [], "entry_point": entry_point, "timeout_s": timeout_s, "nonce": nonce}
    stdin = _frame(first) + _frame(job)
    try:
        run = SANDBOXES.run(stdin, timeout_s + HARNESS_GRACE_S, LIMITS)
    except SandboxUnavailable as e:
        return failed("error", str(e)), []
    return _judge(run, nonce)


def _check_fields(tests: str, io, timeout_s) -> str | None:
    if not tests.strip() and not io:
        return "python_tests record needs 'tests' or a non-empty 'io' list"
    if not 0 < timeout_s <= MAX_TIMEOUT_S:
        return f"timeout_s must be in (0, {MAX_TIMEOUT_S}], got {timeout_s}"
    for k, case in enumerate(io or []):
        if not (isinstance(case, dict) and isinstance(case.get("stdin"), str) and isinstance(case.get("stdout"), str)):
            return f"io[{k}] must be an object with string 'stdin' and 'stdout'"
    return None


def _harness_limits(timeout_s: float) -> dict:
    return {
        "memory_bytes": LIMITS.memory_mb << 20, "cpu_seconds": int(timeout_s) + 1, "nproc": LIMITS.nproc,
        "fsize_bytes": LIMITS.fsize_mb << 20, "nofile": LIMITS.nofile, "output_bytes": LIMITS.output_bytes,
        "workdir": WORKDIR,
    }


def _frame(obj) -> bytes:
    data = json.dumps(obj).encode()
    return len(data).to_bytes(_HEADER_BYTES, "big") + data


def _judge(run: Completed, nonce: str) -> tuple[Result, list[TestOutcome]]:
    """Trust only a complete report carrying our nonce; everything else is a non-pass."""
    report = _parse_report(run.report, nonce) if not run.report_truncated else None
    if report is None:
        return _no_report(run), []
    outcomes = [TestOutcome(int(u["line"]), str(u["test"]), str(u["outcome"]), float(u["seconds"]), str(u["message"]))
                for u in report["units"]]
    n_pass = sum(o.outcome == "pass" for o in outcomes)
    score = n_pass / len(outcomes) if outcomes else 0.0
    kinds = {o.outcome for o in outcomes}
    verdict = "pass" if outcomes and n_pass == len(outcomes) else "timeout" if "timeout" in kinds else (
        "memory" if "memory" in kinds else "fail")
    details = _summary(outcomes, report.get("load_error"))
    return Result(verdict, score if verdict != "pass" else 1.0, run.seconds, details), outcomes


def _parse_report(raw: bytes, nonce: str) -> dict | None:
    try:
        report = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(report, dict) or report.get("nonce") != nonce or not isinstance(report.get("units"), list):
        return None
    return report


def _no_report(run: Completed) -> Result:
    tail = run.stderr[-STDERR_TAIL_BYTES:].decode("utf-8", "replace").strip()
    if run.timed_out:
        return failed("timeout", f"sandbox killed at the wall-clock deadline ({run.seconds:.1f}s); no report")
    signal_number = _killed_by(run)
    if signal_number:  # the harness was killed by a signal, not by us: the candidate can do that
        return failed("fail", f"harness killed by signal {signal_number} (by the candidate code?); no report")
    if run.report:
        return failed("fail", "report did not carry this run's nonce or was malformed; not trusted")
    # Our own bug or a broken sandbox: loud, counted as an error, never a silent 0.
    return failed("error", f"sandbox ({run.isolation}) exited {run.returncode} without a report: {tail}")


def _killed_by(run: Completed) -> int | None:
    """The signal that ended the harness (bwrap reports a child's death by signal N as exit 128+N)."""
    if run.returncode is None:
        return None
    if run.returncode < 0:
        return -run.returncode
    if run.isolation == "bwrap" and run.returncode > 128:
        return run.returncode - 128
    return None


def _summary(outcomes: list[TestOutcome], load_error) -> str:
    n_pass = sum(o.outcome == "pass" for o in outcomes)
    parts = [f"{n_pass}/{len(outcomes)} tests passed"]
    if load_error:
        parts.append(f"candidate code did not load: {load_error}")
    for o in outcomes:
        where = f"line {o.line}" if o.line else o.test
        message = f" {o.message}" if o.message and not load_error else ""
        parts.append(f"{where} {o.outcome} {o.seconds * 1000:.1f}ms{message}")
    text = " | ".join(parts)
    return text if len(text) <= MAX_DETAILS_CHARS else text[: MAX_DETAILS_CHARS - 3] + "..."
