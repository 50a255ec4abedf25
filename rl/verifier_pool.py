"""The verifier role: checks leaf records in its own process, off the trainer's path.

A plain class (Ray wraps it in `branchrl.launch`; several run side by side). Records are in the
`branchrl verify` format; each comes back as a `Result`. A crash inside a verifier is a
counted `error` verdict, never a silent 0.
"""

from __future__ import annotations

import time

from branchrl.verifiers import verify
from branchrl.verifiers.registry import configure
from branchrl.verifiers.result import Result


class VerifierWorker:
    def __init__(self, settings: dict[str, dict] | None = None):
        """settings: `verify.settings`, per-verifier process settings (e.g. {"math": {"workers": 2}})."""
        for name, kwargs in (settings or {}).items():
            configure(name, **kwargs)

    def verify_batch(self, records: list[dict]) -> tuple[list[Result], float]:
        """Returns one Result (verdict, score, seconds, details) per record, and the busy seconds."""
        t0 = time.perf_counter()
        return [verify(r) for r in records], time.perf_counter() - t0
