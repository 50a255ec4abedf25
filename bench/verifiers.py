"""Verifier throughput: math checks per second (numeric fast path and math-verify slow path) and,
when the python_tests verifier is registered, sandboxed code verifications per second.

    .venv/bin/python bench/verifiers.py [--seconds 5] [--jobs 2]

python_tests runs on warm sandboxes (one per concurrent job, started during the warm-up, then reused:
each record costs a fork of the harness inside the sandbox, not a sandbox start); the one-off cost of
starting a sandbox is printed on its own line. Prints one line per case; record results in
docs/BENCHMARKS.md with date, device and command. Not a test: nothing here asserts a target.
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
        {"verifier": "math", "completion": f"so the total is 12 apples\n#### {n}",
         "answer": f"#### {n if n % 4 else n + 1}"}
        for n in range(200)],
    "math symbolic (math-verify worker)": [
        {"verifier": "math", "completion": rf"hence \boxed{{\sqrt{{{n}}}+\frac{{1}}{{2}}}}",
         "answer": rf"\frac{{1}}{{2}}+\sqrt{{{n if n % 4 else n + 1}}}"} for n in range(2, 60)],
}
ADD_CASE = {
    "verifier": "python_tests",
    "completion": "```python\ndef add(a, b):\n    return a + b\n```",
    "tests": "assert add(1, 2) == 3\nassert add(-1, 1) == 0\nassert add(10, 5) == 15",
    "timeout_s": 5,
}
# HumanEval/0 with its canonical solution: a median-sized HumanEval record (7 asserts, ~450 characters of tests).
HUMANEVAL_CASE = {
    "verifier": "python_tests",
    "completion": (
        "```python\nfrom typing import List\n\n\n"
        "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
        '    """ Check if in given list of numbers, are any two numbers closer to each other than\n'
        "    given threshold.\n    >>> has_close_elements([1.0, 2.0, 3.0], 0.5)\n    False\n"
        '    >>> has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3)\n    True\n    """\n'
        "    for idx, elem in enumerate(numbers):\n        for idx2, elem2 in enumerate(numbers):\n"
        "            if idx != idx2:\n                distance = abs(elem - elem2)\n"
        "                if distance < threshold:\n                    return True\n\n    return False\n```"
    ),
    "tests": (
        "\n\nMETADATA = {\n    'author': 'jt',\n    'dataset': 'test'\n}\n\n\ndef check(candidate):\n"
        "    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True\n"
        "    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False\n"
        "    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.95) == True\n"
        "    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.8) == False\n"
        "    assert candidate([1.0, 2.0, 3.0, 4.0, 5.0, 2.0], 0.1) == True\n"
        "    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 1.0) == True\n"
        "    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 0.5) == False\n\n"
    ),
    "entry_point": "has_close_elements",
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
        cases["python_tests warm sandbox, 3 asserts"] = [ADD_CASE] * (4 * args.jobs)
        cases["python_tests warm sandbox, HumanEval/0"] = [HUMANEVAL_CASE] * (4 * args.jobs)
        print(f"{'python_tests sandbox start (once per job)':40s}        {sandbox_start_ms():10.1f} ms")
    for name, records in cases.items():
        for jobs in sorted({1, args.jobs}):
            rate(records, 0.0, jobs)  # warm-up: every concurrent caller's worker process or sandbox is started
            per_s, verdicts = rate(records, args.seconds, jobs)
            print(f"{name:40s} jobs={jobs}  {per_s:10.1f} /s   verdicts {verdicts}")


def sandbox_start_ms() -> float:
    """Wall time of a record that has to start its sandbox first (what the warm sandboxes save per record)."""
    from branchrl.verifiers.warm_sandbox import SANDBOXES

    SANDBOXES.close()
    t0 = time.perf_counter()
    verify(ADD_CASE)
    return (time.perf_counter() - t0) * 1000


if __name__ == "__main__":
    main()
