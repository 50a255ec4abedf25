"""Find an environment by name: the built-in dict, the `branchrl.envs` entry points, or a dotted path.

A new environment is one file exposing `load_environment(**kwargs)`. Third-party packages register
it under the entry-point group `branchrl.envs`; a config may also name `pkg.module` or
`pkg.module:function` directly.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Callable

from .base import EnvError, Environment

BUILTIN: dict[str, str] = {
    "arithmetic": "branchrl.envs.arithmetic:load_environment",
    "countdown": "branchrl.envs.countdown:load_environment",
    "echo": "branchrl.envs.echo:load_environment",
    "gsm8k": "branchrl.envs.gsm8k:load_environment",
    "humaneval": "branchrl.envs.humaneval:load_environment",
    "math": "branchrl.envs.math_problems:load_environment",  # module name never shadows stdlib math
    "mbpp": "branchrl.envs.mbpp:load_environment",
    "synth_fn": "branchrl.envs.synth_fn:load_environment",
}


def _resolve(name: str) -> Callable[..., Environment]:
    target = BUILTIN.get(name)
    if target is None:
        found = [ep for ep in entry_points(group="branchrl.envs") if ep.name == name]
        if found:
            try:
                return found[0].load()
            except (ImportError, AttributeError) as e:
                raise EnvError(f"env {name!r}: entry point {found[0].value} does not load ({e})") from None
        target = name
    module_name, _, fn_name = target.partition(":")
    try:
        # "" and ".relative" names raise ValueError / TypeError, not ImportError
        module = importlib.import_module(module_name) if module_name and not module_name.startswith(".") else None
    except ImportError as e:
        module, why = None, f" ({e})"
    else:
        why = ""
    if module is None:
        known = sorted(set(BUILTIN) | {ep.name for ep in entry_points(group="branchrl.envs")})
        raise EnvError(f"unknown env {name!r}{why}; known: {', '.join(known)}, or a dotted path 'pkg.module[:fn]'")
    fn = getattr(module, fn_name or "load_environment", None)
    if not callable(fn):
        raise EnvError(f"env {name!r}: module {module_name} has no function {fn_name or 'load_environment'}()")
    return fn


def load_env(name: str, **kwargs) -> Environment:
    fn = _resolve(name)
    try:
        env = fn(**kwargs)
    except (TypeError, ValueError) as e:
        raise EnvError(f"env {name!r}: {e}") from None
    if not isinstance(env, Environment):
        raise EnvError(f"env {name!r}: load_environment() returned {type(env).__name__}, not an Environment")
    return env
