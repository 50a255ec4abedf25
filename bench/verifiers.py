"""Verifier throughput: math checks per second (numeric fast path and math-verify slow path) and,
when the python_tests verifier is registered, sandboxed code verifications per second.

    .venv/bin/python bench/verifiers.py [--seconds 5] [--jobs 2]

Prints one line per case; record results in docs/BENCHMARKS.md with date, device and command.
Not a test: nothing here asserts a target.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor

from branchrl.verifiers import VERIFIERS, verify

MATH_CASES = {
    "math numeric (GSM8K-style)": [
        {"verifier": "math", "completion": f"so the total is 12 apples\n#### {n}", "answer": f"#### {n if n % 4 else n + 1}"}
        for n in range(200)],
    "math symbolic (math-verify worker)": [
        {"verifier": "math", "completion": rf"hence \boxed{{\sqrt{{{n}}}+\frac{{1}}{{2}}}}",
         "answer": rf"\frac{{1}}{{2}}+\sqrt{{{n if n % 4 else n + 1}}}"} for n in range(2, 60)],
}
CODE_CASE = {
    "verifier": "python_tests",
    "completion": "```python\ndef add(a, b):\n    return a + b\n```",
    "tests": "assert add(1, 2) == 3\nassert add(-1, 1) == 0\nassert add(10, 5) == 15",
    "timeout_s": 5,
}


def rate(records: list[dict], seconds: float, jobs: int) -> tuple[float, dict]:
    """Records verified per second over about `seconds`, cycling through `records` on `jobs` threads."""
    verdicts: dict[str, int] = {}
    done, t0 = 0, time.perf_counter()
    with ThreadPoolExecutor(jobs) as pool:
        while time.perf_counter() - t0 < seconds:
            for result in pool.map(verify, records):
                verdicts[result.verdict] = verdicts.get(result.verdict, 0) + 1
            done += len(records)
    return done / (time.perf_counter() - t0), verdicts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="measuring time per case")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel verifications")
    args = ap.parse_args()
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, jobs={args.jobs}")
    for records in MATH_CASES.values():  # warm up: math-verify's worker imports sympy once
        verify(records[0])
    cases = dict(MATH_CASES)
    if "python_tests" in VERIFIERS:
        cases["python_tests (sandboxed, 3 asserts)"] = [CODE_CASE] * (4 * args.jobs)
        verify(CODE_CASE)
    for name, records in cases.items():
        for jobs in sorted({1, args.jobs}):
            rate(records, 0.0, jobs)  # warm-up: every concurrent caller's worker process is started
            per_s, verdicts = rate(records, args.seconds, jobs)
            print(f"{name:40s} jobs={jobs}  {per_s:10.1f} /s   verdicts {verdicts}")


if __name__ == "__main__":
    main()
