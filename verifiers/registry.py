"""The registry of verifiers, and `verify(record)`: the one dispatcher over it.

A record's "verifier" name is looked up in the built-in `VERIFIERS` dict, then among the entry
points of the group `branchrl.verifiers` (third-party packages), then as `pkg.module[:attr]` or
`path/to/file.py[:attr]` (attribute `VERIFIER` by default). Each resolves to a `Verifier`: the
checking function, its version string (stored with every sample as provenance), the record fields
it takes, the signature that tells two verified completions apart, and optional process-wide
settings (`configure`). `verify` turns a bad record (not an object, unknown verifier, missing or
ill-typed field) and a crash inside a checking function into an "error" `Result` naming the
problem; it never raises. Fields a verifier does not declare are ignored, so records may carry ids
and prompts along.

Deliberately not here: any pooling or parallelism (the caller's verifier pool decides how many
records run at once).
"""

import threading
from dataclasses import dataclass, field
from typing import Callable

from . import countdown, math_answer, python_tests
from .plugins import PluginError, describe, load_entry_point, load_target, registered
from .result import Result, failed

GROUP = "branchrl.verifiers"  # the entry-point group third-party verifiers register under
DEFAULT_ATTR = "VERIFIER"  # what a module or .py file named without `:attr` must define
ERROR_CHARS = 300  # a crashing verifier's exception text is cut to this in `details`


def text_signature(completion: str) -> str:
    """Whitespace-normalised text: two completions that differ only in layout are the same sample."""
    return " ".join(completion.split())


@dataclass(frozen=True)
class Verifier:
    check: Callable[..., Result]  # called with the record's declared fields as keyword arguments
    version: str  # e.g. "math-1"; the module's VERSION, bumped when its semantics change
    required: dict[str, tuple[type, ...]]  # field name -> accepted JSON types
    optional: dict[str, tuple[type, ...]] = field(default_factory=dict)
    # what makes two verified completions the same sample (de-duplication of the data set)
    signature: Callable[[str], str] = text_signature
    # process-wide settings, e.g. math's configure(workers=2); None when there are none
    configure: Callable[..., None] | None = None


VERIFIERS: dict[str, Verifier] = {
    "math": Verifier(
        check=math_answer.verify_math,
        version=math_answer.VERSION,
        required={"completion": (str,), "answer": (str,)},
        optional={"timeout_s": (int, float), "numeric": (bool,)},
        configure=math_answer.configure,
    ),
    "python_tests": Verifier(
        check=python_tests.verify_python_tests,
        version=python_tests.VERSION,
        required={"completion": (str,)},
        optional={"tests": (str,), "io": (list,), "entry_point": (str,), "timeout_s": (int, float)},
        signature=python_tests.code_signature,
    ),
    "countdown": Verifier(
        check=countdown.verify_countdown,
        version=countdown.VERSION,
        required={"completion": (str,), "numbers": (list,), "target": (int,)},
        optional={"use_all": (bool,)},
    ),
}
_LOADED: dict[str, Verifier] = {}  # plug-ins resolved in this process, by the name records use
_LOCK = threading.Lock()


class UnknownVerifier(KeyError):
    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0])


def get_verifier(name: str) -> Verifier:
    """The verifier a record names; raises UnknownVerifier with a one-line reason."""
    if name in VERIFIERS:
        return VERIFIERS[name]
    with _LOCK:
        if name not in _LOADED:
            _LOADED[name] = _load(name)
        return _LOADED[name]


def _load(name: str) -> Verifier:
    try:
        ep = registered(GROUP).get(name)
        found = load_entry_point(ep) if ep is not None else load_target(name, DEFAULT_ATTR)
    except PluginError as e:
        if not e.found:
            raise UnknownVerifier(f"unknown verifier {name!r} ({e}); registered: {', '.join(names())}, "
                                  f"or a dotted path 'pkg.module[:attr]' or a .py file") from None
        raise UnknownVerifier(f"verifier {name!r}: {e}") from None
    if not isinstance(found, Verifier):
        raise UnknownVerifier(f"verifier {name!r} is a {type(found).__name__}, not a branchrl.verifiers.Verifier")
    return found


def names() -> list[str]:
    """Every registered name: built-ins and entry points (dotted paths and files are not listed)."""
    return sorted(set(VERIFIERS) | set(registered(GROUP)))


def listed() -> dict[str, str]:
    """Each registered name with where it comes from, its version and record fields (or why it does not load)."""
    out = {}
    for name in names():
        ep = None if name in VERIFIERS else registered(GROUP)[name]
        source = "built-in" if ep is None else describe(ep)
        try:
            v = get_verifier(name)
        except UnknownVerifier as e:
            out[name] = f"{source}: {e}"
            continue
        fields = ", ".join([*v.required, *(f"[{key}]" for key in v.optional)])
        out[name] = f"{v.version}  {source}  fields: {fields}"
    return out


def verifier_version(name: str) -> str:
    """The version string of a verifier, e.g. "math-1"; an unknown name is our bug, so it raises."""
    return get_verifier(name).version


def configure(name: str, **settings) -> None:
    """Apply process-wide settings to one verifier, e.g. configure("math", workers=2)."""
    verifier = get_verifier(name)
    if verifier.configure is None:
        raise ValueError(f"verifier {name!r} has no settings")
    verifier.configure(**settings)


def verify(record: dict) -> Result:
    """Dispatch on record["verifier"]; a malformed record or a crashing verifier gets an "error" verdict."""
    if not isinstance(record, dict):
        return failed("error", f"record is a {type(record).__name__}, not a JSON object")
    name = record.get("verifier")
    if name is None:
        return failed("error", f"record has no 'verifier' field (one of: {', '.join(names())})")
    if not isinstance(name, str):
        return failed("error", f"the 'verifier' field must be a string, got {type(name).__name__}")
    try:
        verifier = get_verifier(name)
    except UnknownVerifier as e:
        return failed("error", str(e))
    kwargs, problem = _fields(name, verifier, record)
    if problem is not None:
        return failed("error", problem)
    try:
        return verifier.check(**kwargs)
    except Exception as e:  # our bug or a plug-in's, never the model's: counted as an error, not a silent 0
        return failed("error", f"verifier {name!r} raised {type(e).__name__}: {e}"[:ERROR_CHARS])


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
