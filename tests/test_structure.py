"""The import boundaries of shared/DESIGN.md and the function-length budget, read from the source with `ast`.

Imports are collected from every statement, function-level ones included (a lazy `import ray` still
crosses the boundary); `from X import a` counts as importing `X.a`, so `from branchrl import config`
is caught. Nothing is imported or run: these tests read files.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"rl": "branchrl", "verifiers": "branchrl.verifiers", "envs": "branchrl.envs"}
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    """branchrl's dotted name for a source file, e.g. verifiers/harness/wire.py -> branchrl.verifiers.harness.wire."""
    rel = path.relative_to(ROOT)
    parts = [PACKAGES[rel.parts[0]], *rel.parts[1:-1]]
    if rel.stem != "__init__":
        parts.append(rel.stem)
    return ".".join(parts)


def imports(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every absolute module (or `module.name`) the source imports, relative imports resolved."""
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def violations(folder: str, forbidden) -> list[str]:
    out = []
    for path in files(folder) if not folder.endswith(".py") else [ROOT / folder]:
        module = module_name(path)
        for name in sorted(imports(path.read_text(), module, path.stem == "__init__")):
            if forbidden(name):
                out.append(f"{path.relative_to(ROOT)} imports {name}")
    return out


def top(name: str) -> str:
    return name.split(".")[0]


def under(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def outside(name: str, *allowed: str) -> bool:
    """A branchrl module that is not one of `allowed` or under it."""
    return top(name) == "branchrl" and not under(name, *allowed)


def test_verifiers_import_no_torch_ray_or_branchrl_outside_verifiers():
    assert violations("verifiers", lambda n: top(n) in ("torch", "ray") or outside(n, "branchrl.verifiers")) == []


def test_envs_import_only_envs_and_verifiers_of_branchrl():
    assert violations("envs", lambda n: outside(n, "branchrl.envs", "branchrl.verifiers")) == []


def test_engine_imports_no_ray_verifiers_or_envs():
    assert violations("rl/engine", lambda n: top(n) == "ray" or under(n, "branchrl.verifiers", "branchrl.envs")) == []


def test_trainer_imports_no_ray():
    """The training role is plain torch; Ray wires it in the trainer group (group.py) and launch only."""
    trainer_side = [p for p in files("rl/training") if p.name != "group.py"]
    assert [v for p in trainer_side for v in violations(str(p.relative_to(ROOT)), lambda n: top(n) == "ray")] == []


def test_the_trainer_and_rollout_worker_load_without_ray_or_datasets():
    """What bench/gpu_check.sh imports on a GPU machine that has neither."""
    import subprocess
    import sys

    code = ("import sys, branchrl.training.trainer, branchrl.rollout.worker, branchrl.training.objectives; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'datasets', 'pyarrow'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr[-2000:]


def test_the_import_reader_sees_lazy_relative_and_from_imports():
    source = "import os\ndef f():\n    import ray.util\n    from .. import config\n    from .wire import send\n"
    found = imports(source, "branchrl.verifiers.harness.judge")
    assert found == {"os", "ray.util", "branchrl.verifiers.config", "branchrl.verifiers.harness.wire.send"}
    assert imports("from . import registry", "branchrl.envs", is_package=True) == {"branchrl.envs.registry"}
    assert outside("branchrl.config", "branchrl.verifiers") and not outside("torch", "branchrl.verifiers")


def long_functions(folder: str) -> list[str]:
    out = []
    for path in files(folder):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    return out


@pytest.mark.parametrize("folder", ["rl", "verifiers", "envs"])
def test_no_function_is_over_60_lines(folder):
    assert long_functions(folder) == []


def test_the_bench_and_script_files_compile():
    """Benchmarks run by hand, not by the suite: a compile error (bench/branching.py once declared a global after
    using it) would otherwise surface only in the next experiment."""
    files = sorted([*ROOT.glob("bench/*.py"), *ROOT.glob("scripts/*.py")])
    assert files
    for path in files:
        compile(path.read_text(), str(path), "exec")
