"""Verifiers: pure checking code that turns a model's output into a verdict record.

`verify(record)` dispatches a `{"verifier": name, ...}` record to a `Verifier` (the built-in
`VERIFIERS` dict, the `branchrl.verifiers` entry points, or a dotted path / .py file) and returns a
`Result` (pass / fail / timeout / memory / error, score, seconds, details).
Deliberately not here: torch, ray, transformers, or anything else from `branchrl`; this package
runs on its own (`branchrl verify`) and inside any other framework.
"""

from .cli import main_verify
from .math_answer import verify_math
from .registry import VERIFIERS, Verifier, configure, get_verifier, verifier_version, verify
from .result import VERDICTS, Result, failed, passed

__all__ = ["VERDICTS", "VERIFIERS", "Result", "Verifier", "configure", "failed", "get_verifier", "main_verify",
           "passed", "verifier_version", "verify", "verify_math"]
