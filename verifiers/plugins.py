"""Finding user code by name: an entry point of a group, `pkg.module[:attr]`, or `path/to/file.py[:attr]`.

The verifier registry (group `branchrl.verifiers`) and the env registry (group `branchrl.envs`) both
look names up here, so the two extension points resolve names the same way. A `.py` file is loaded
once per process under a name derived from its absolute path, so two files called `check.py` never
collide and a relative path means the same file wherever it is loaded from in this process.
Deliberately not here: built-in names (each registry has its own dict) and what the loaded object
must be (the caller checks and words the error).
"""

import hashlib
import importlib
import importlib.util
import sys
import threading
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType

_LOCK = threading.Lock()  # one thread loads a given file; the others find it in sys.modules


class PluginError(LookupError):
    """The name cannot be loaded; `found` is False when nothing of that name exists at all."""

    def __init__(self, message: str, found: bool) -> None:
        super().__init__(message)
        self.found = found


def registered(group: str) -> dict[str, EntryPoint]:
    """The entry points of `group` by name (the first one wins when two packages use a name)."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=group):
        found.setdefault(ep.name, ep)
    return found


def describe(ep: EntryPoint) -> str:
    """'entry point module:attr (distribution)', for listings."""
    return f"entry point {ep.value}" + (f" ({ep.dist.name})" if ep.dist else "")


def load_entry_point(ep: EntryPoint) -> object:
    try:
        return ep.load()
    except Exception as e:  # a broken plug-in is its author's to fix: say which and why
        raise PluginError(f"entry point {ep.value} does not load ({type(e).__name__}: {e})", True) from None


def load_target(target: str, default_attr: str) -> object:
    """The object `target` names: `module[:attr]` or `file.py[:attr]`; `default_attr` when no `:attr`."""
    module_name, attr = _split(target)
    module = _module(module_name)
    if not hasattr(module, attr or default_attr):
        raise PluginError(f"module {module_name} has no attribute {attr or default_attr!r}", True)
    return getattr(module, attr or default_attr)


def _split(target: str) -> tuple[str, str]:
    """('module or file', 'attr' or ''); a Windows drive letter's colon is not an attribute separator."""
    head, sep, tail = target.rpartition(":")
    if sep and tail.isidentifier() and head:
        return head, tail
    return target, ""


def _module(name: str) -> ModuleType:
    if name.endswith(".py"):
        return _file_module(Path(name))
    if not name or name.startswith(".") or not all(part.isidentifier() for part in name.split(".")):
        raise PluginError(f"{name!r} is neither a module name nor a .py file", False)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
            raise PluginError(f"no module named {e.name!r}", False) from None
        raise PluginError(f"module {name} does not import ({type(e).__name__}: {e})", True) from None
    except Exception as e:  # the module exists but its code fails: the author's to fix, so say why
        raise PluginError(f"module {name} does not import ({type(e).__name__}: {e})", True) from None


def _file_module(path: Path) -> ModuleType:
    """Load a .py file as a module (once per process), without putting its folder on sys.path."""
    path = path.expanduser().resolve()
    if not path.is_file():
        raise PluginError(f"no file {path}", False)
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    name = f"_branchrl_file_{''.join(c if c.isalnum() else '_' for c in path.stem)}_{digest}"
    with _LOCK:
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look the module up while it runs
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[name]
            raise PluginError(f"{path} does not load ({type(e).__name__}: {e})", True) from None
    return module
