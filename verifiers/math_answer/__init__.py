"""Math answer verifier: extract the model's final answer, then compare it with the gold answer.

Extraction is ours (extract.py): the last `\\boxed{...}` (nested braces handled; with several, the
last one is the answer, as the MATH graders read it), else the rest of the last GSM8K `#### x` line,
else what follows the last "answer is". So is a rule math-verify is too lenient about: a hedge such
as "42 or 43" fails. Plain numbers and simple fractions (most RL leaves) are compared exactly
in-process with `fractions.Fraction` (exact.py). Everything else goes to `math_verify` in a
persistent worker process (worker.py) that the parent kills when the deadline passes (pool.py),
because math-verify's own `signal.alarm` timeout only works on a main thread and sympy can hang or
eat memory on model text. Importing this package starts no process: the first slow-path comparison
does, and `configure(workers=N)` sets how many may run at once.

Deliberately not here: no `eval` of model text, no partial credit, no tolerance for near-equal
numbers on the fast path, no ×100 "percent" equivalence, no retry of an answer that timed out.
The package is named `math_answer` so it can never shadow the standard library's `math`.
"""

from .verifier import VERSION, configure, verify_math

__all__ = ["VERSION", "configure", "verify_math"]
