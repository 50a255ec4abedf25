"""Find an environment by name: the built-in dict, the `branchrl.envs` entry points, a dotted path, or a file.

A new environment is one file exposing `load_environment(**kwargs)`. Third-party packages register
it under the entry-point group `branchrl.envs`; a config may also name `pkg.module[:function]` (an
importable module) or `path/to/file.py[:function]` (any file, no PYTHONPATH needed). Names resolve
the same way as verifier names (`branchrl.verifiers.plugins`).
Deliberately not here: what an environment is (base.py) and checking one (check.py).
"""

from __future__ import annotations

from typing import Callable

from branchrl.verifiers.plugins import PluginError, describe, load_entry_point, load_target, registered
from branchrl.verifiers.registry import UnknownVerifier, get_verifier

from .base import EnvError, Environment

GROUP = "branchrl.envs"
DEFAULT_FUNCTION = "load_environment"
BUILTIN: dict[str, str] = {
    "arithmetic": "branchrl.envs.arithmetic:load_environment",
    "countdown": "branchrl.envs.countdown:load_environment",
    "echo": "branchrl.envs.echo:load_environment",
    "gsm8k": "branchrl.envs.gsm8k:load_environment",
    "humaneval": "branchrl.envs.humaneval:load_environment",
    "math": "branchrl.envs.math_problems:load_environment",  # module name never shadows stdlib math
    "mbpp": "branchrl.envs.mbpp:load_environment",
    "multiply": "branchrl.envs.multiply:load_environment",
    "synth_fn": "branchrl.envs.synth_fn:load_environment",
}


def listed() -> dict[str, str]:
    """Every registered name (built-ins, then entry points) and what it loads."""
    names = {name: f"built-in {target}" for name, target in BUILTIN.items()}
    for name, ep in registered(GROUP).items():
        names.setdefault(name, describe(ep))
    return names


def _resolve(name: str) -> Callable[..., Environment]:
    ep = None if name in BUILTIN else registered(GROUP).get(name)
    try:
        fn = load_entry_point(ep) if ep is not None else load_target(BUILTIN.get(name, name), DEFAULT_FUNCTION)
    except PluginError as e:
        if not e.found:
            raise EnvError(f"unknown env {name!r} ({e}); known: {', '.join(sorted(listed()))}, or a dotted path "
                           f"'pkg.module[:fn]' or a .py file") from None
        raise EnvError(f"env {name!r}: {e}") from None
    if not callable(fn):
        raise EnvError(f"env {name!r}: {type(fn).__name__} is not a function returning an Environment")
    return fn


def load_env(name: str, **kwargs) -> Environment:
    fn = _resolve(name)
    try:
        env = fn(**kwargs)
    except (TypeError, ValueError) as e:
        raise EnvError(f"env {name!r}: {e}") from None
    if not isinstance(env, Environment):
        raise EnvError(f"env {name!r}: load_environment() returned {type(env).__name__}, not an Environment")
    try:
        get_verifier(env.verifier)  # a verifier that does not resolve fails now, not in the verifier pool mid-run
    except UnknownVerifier as e:
        raise EnvError(f"env {name!r}: {e}") from None
    return env
