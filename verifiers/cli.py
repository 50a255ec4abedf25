"""`branchrl verify FILE.jsonl`: check one JSON record per line, print each back with its verdict.

Each output line is the input record plus `verdict`, `score`, `seconds` and `details`. A line that
is not a JSON object becomes an "error" line that names it, and the run goes on: nothing is lost.
Deliberately not here: argument parsing and exit codes (the top-level `branchrl` CLI owns them),
and parallelism (records are checked one after another, in order).
"""

import contextlib
import json
import sys
from typing import TextIO

from .registry import verify


def main_verify(path: str, out: TextIO | None = None) -> int:
    """Verify every record of the JSONL file `path` ("-" = stdin) onto `out` (default stdout); returns 0.

    A missing file raises FileNotFoundError; the caller turns it into a one-line error.
    """
    out = sys.stdout if out is None else out
    source = contextlib.nullcontext(sys.stdin) if path == "-" else open(path, encoding="utf-8", errors="replace")
    with source as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                out.write(json.dumps(_verify_line(number, line)) + "\n")
                out.flush()
    return 0


def _verify_line(number: int, line: str) -> dict:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError) as e:  # untrusted input: report it on its own line
        return _bad_line(number, f"invalid JSON: {e}")
    if not isinstance(record, dict):
        return _bad_line(number, f"not a JSON object but a {type(record).__name__}")
    return {**record, **verify(record).to_dict()}


def _bad_line(number: int, reason: str) -> dict:
    return {"line": number, "verdict": "error", "score": 0.0, "seconds": 0.0, "details": f"line {number}: {reason}"}
