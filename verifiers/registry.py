"""The explicit registry of verifiers, and `verify(record)`: the one dispatcher over it.

`VERIFIERS` maps a record's "verifier" name to a `Verifier`: the checking function, its version
string (stored with every sample as provenance) and the record fields it takes. `verify` turns a
bad record (not an object, unknown verifier, missing or ill-typed field) into an "error" `Result`
naming the problem; it never raises for untrusted input. Fields a verifier does not declare are
ignored, so records may carry ids and prompts along.

Deliberately not here: entry-point or dotted-path discovery of third-party verifiers, and any
pooling or parallelism (the caller's verifier pool decides how many records run at once).
"""

from dataclasses import dataclass, field
from typing import Callable

from . import countdown, math_answer, python_tests
from .result import Result, failed


@dataclass(frozen=True)
class Verifier:
    check: Callable[..., Result]  # called with the record's declared fields as keyword arguments
    version: str  # e.g. "math-1"; the module's VERSION, bumped when its semantics change
    required: dict[str, tuple[type, ...]]  # field name -> accepted JSON types
    optional: dict[str, tuple[type, ...]] = field(default_factory=dict)


VERIFIERS: dict[str, Verifier] = {
    "math": Verifier(
        check=math_answer.verify_math,
        version=math_answer.VERSION,
        required={"completion": (str,), "answer": (str,)},
        optional={"timeout_s": (int, float), "numeric": (bool,)},
    ),
    "python_tests": Verifier(
        check=python_tests.verify_python_tests,
        version=python_tests.VERSION,
        required={"completion": (str,)},
        optional={"tests": (str,), "io": (list,), "entry_point": (str,), "timeout_s": (int, float)},
    ),
    "countdown": Verifier(
        check=countdown.verify_countdown,
        version=countdown.VERSION,
        required={"completion": (str,), "numbers": (list,), "target": (int,)},
        optional={"use_all": (bool,)},
    ),
}


def verifier_version(name: str) -> str:
    """The version string of a registered verifier, e.g. "math-1"; unknown names are our bug."""
    if name not in VERIFIERS:
        raise KeyError(f"unknown verifier {name!r}; registered: {', '.join(sorted(VERIFIERS))}")
    return VERIFIERS[name].version


def verify(record: dict) -> Result:
    """Dispatch on record["verifier"]; a malformed record gets an "error" verdict, never an exception."""
    if not isinstance(record, dict):
        return failed("error", f"record is a {type(record).__name__}, not a JSON object")
    name = record.get("verifier")
    if name is None:
        return failed("error", f"record has no 'verifier' field (one of: {', '.join(sorted(VERIFIERS))})")
    if not isinstance(name, str) or name not in VERIFIERS:
        return failed("error", f"unknown verifier {name!r}; registered: {', '.join(sorted(VERIFIERS))}")
    verifier = VERIFIERS[name]
    kwargs, problem = _fields(name, verifier, record)
    if problem is not None:
        return failed("error", problem)
    return verifier.check(**kwargs)


def _fields(name: str, verifier: Verifier, record: dict) -> tuple[dict, str | None]:
    """The declared fields of `record` as keyword arguments, or ({}, what is wrong with them)."""
    kwargs = {}
    for key, types in [*verifier.required.items(), *verifier.optional.items()]:
        if key not in record:
            if key in verifier.required:
                return {}, f"{name} record is missing the {key!r} field"
            continue
        value = record[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            wanted = " or ".join(t.__name__ for t in types)
            return {}, f"{name} record field {key!r} must be {wanted}, got {type(value).__name__}"
        kwargs[key] = value
    return kwargs, None
