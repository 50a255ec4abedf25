"""`branchrl verify FILE.jsonl`: check one JSON record per line, print each back with its verdict.

Each output line is the input record plus `verdict`, `score`, `seconds` and `details`, in input
order; an "error" line also carries `line`, its line number in the input (replacing a `line` field
of the record's own). A line that is not a JSON object becomes an "error" line that names it, and
the run goes on: nothing is lost. At the end a per-verdict count goes to stderr; with `strict`,
the return value is 1 when any record is an error. `jobs` > 1 checks records on threads
(the heavy work already runs in worker processes: math-verify's worker, one warm code sandbox per job).
Deliberately not here: argument parsing and exit codes (the top-level `branchrl` CLI owns them).
"""

import collections
import contextlib
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TextIO

from .registry import verify
from .result import VERDICTS

AHEAD_PER_JOB = 4  # with jobs > 1, records in flight per job: enough to keep every job busy, few enough to stream


def main_verify(path: str, out: TextIO | None = None, jobs: int = 1, summary: TextIO | None = None,
                strict: bool = False) -> int:
    """Verify every record of the JSONL file `path` ("-" = stdin) onto `out` (default stdout); returns 0,
    or 1 with `strict` when any record is an error.

    A missing file raises FileNotFoundError; the caller turns it into a one-line error. The
    per-verdict summary goes to `summary` (default stderr).
    """
    out = sys.stdout if out is None else out
    t0, counts = time.perf_counter(), collections.Counter()
    source = contextlib.nullcontext(sys.stdin) if path == "-" else open(path, encoding="utf-8", errors="replace")
    with source as lines:
        numbered = ((n, line) for n, line in enumerate(lines, start=1) if line.strip())
        for row in _rows(numbered, jobs):
            counts[row["verdict"]] += 1
            out.write(json.dumps(row) + "\n")
            out.flush()
    per_verdict = ", ".join(f"{v} {counts[v]}" for v in VERDICTS if counts[v])
    print(f"verified {sum(counts.values())} records in {time.perf_counter() - t0:.2f}s: {per_verdict or 'none'}",
          file=sys.stderr if summary is None else summary)
    return 1 if strict and counts["error"] else 0


def _rows(numbered, jobs: int):
    """Verified rows in input order; with jobs > 1 a bounded window runs ahead, so stdin still streams."""
    if jobs <= 1:
        yield from (_verify_line(n, line) for n, line in numbered)
        return
    with ThreadPoolExecutor(jobs) as pool:
        window: collections.deque = collections.deque()
        for n, line in numbered:
            window.append(pool.submit(_verify_line, n, line))
            if len(window) >= AHEAD_PER_JOB * jobs:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


def _verify_line(number: int, line: str) -> dict:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError) as e:  # untrusted input: report it on its own line
        return _bad_line(number, f"invalid JSON: {e}")
    if not isinstance(record, dict):
        return _bad_line(number, f"not a JSON object but a {type(record).__name__}")
    row = {**record, **verify(record).to_dict()}
    return {**row, "line": number} if row["verdict"] == "error" else row


def _bad_line(number: int, reason: str) -> dict:
    return {"line": number, "verdict": "error", "score": 0.0, "seconds": 0.0, "details": f"line {number}: {reason}"}
