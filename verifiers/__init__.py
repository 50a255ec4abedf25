"""Verifiers: pure checking code that turns a model's output into a verdict record.

`verify(record)` dispatches a `{"verifier": name, ...}` record through the explicit `VERIFIERS`
registry and returns a `Result` (pass / fail / timeout / memory / error, score, seconds, details).
Deliberately not here: torch, ray, transformers, or anything else from `branchrl`; this package
runs on its own (`branchrl verify`) and inside any other framework.
"""

from .cli import main_verify
from .math_answer import verify_math
from .registry import VERIFIERS, Verifier, verifier_version, verify
from .result import VERDICTS, Result

__all__ = ["VERDICTS", "VERIFIERS", "Result", "Verifier", "main_verify", "verifier_version", "verify", "verify_math"]
