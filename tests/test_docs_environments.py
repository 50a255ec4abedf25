"""docs/ENVIRONMENTS.md runs as written, from a folder outside the repository, with branchrl as installed.

The doc's fenced blocks are replayed in order in a fresh temporary folder: a block whose info string
says `file=NAME` is written to NAME; other ```python blocks run as scripts; ```console blocks run each
`$ command` with bash, and the lines shown after it must appear in its output, in order (`...` in a
line stands for any text; a line of only `...` for any lines). The one liberty taken: `pip install X`
installs into a folder of the test (`--target`, on PYTHONPATH for later commands) rather than into
the shared test environment, so the entry points it registers do not leak into other tests.
A ```yaml file= block is a run config: it must load and name an env that loads.
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "ENVIRONMENTS.md"
BIN = Path(sys.executable).parent
FENCE = re.compile(r"^```(\w*)([^\n]*)\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def blocks(text: str) -> list[tuple[str, dict, str]]:
    """(language, attributes such as {"file": ...}, body) of every fenced block, in order."""
    out = []
    for lang, info, body in FENCE.findall(text):
        attrs = dict(item.split("=", 1) for item in info.split() if "=" in item)
        out.append((lang, attrs, body))
    return out


def commands(body: str) -> list[tuple[str, list[str]]]:
    """(command, the output lines the doc shows for it) for each `$ ` line of a console block."""
    out: list[tuple[str, list[str]]] = []
    for line in body.splitlines():
        if line.startswith("$ "):
            out.append((line[2:], []))
        elif out:
            out[-1][1].append(line)
    return out


def matches(shown: list[str], output: str) -> bool:
    """Every shown line appears among the output lines, in order; `...` inside a line is any text."""
    lines = output.splitlines()
    pos = 0
    for want in shown:
        if want.strip() == "...":
            continue
        pattern = re.compile(".*".join(map(re.escape, want.split("..."))))
        while pos < len(lines) and not pattern.fullmatch(lines[pos].rstrip()):
            pos += 1
        if pos == len(lines):
            return False
        pos += 1
    return True


def run_console(body: str, cwd: Path, env: dict) -> None:
    for command, shown in commands(body):
        if command.startswith("pip install "):
            site = cwd.parent / "site"
            command = (f"{shlex.quote(sys.executable)} -m pip install --quiet --no-deps --no-build-isolation "
                       f"--target {site} {command[len('pip install '):]}")
        proc = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"$ {command}\nexit {proc.returncode}\n{output}"
        assert matches(shown, output), f"$ {command}\nthe doc shows:\n" + "\n".join(shown) + f"\ngot:\n{output}"


def check_config(path: Path, cwd: Path, env: dict) -> None:
    code = ("import sys; from branchrl.config import load_config; from branchrl.envs import load_env; "
            "cfg = load_config(sys.argv[1]); print(load_env(cfg.env.name, **cfg.env.kwargs).name)")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_the_doc_has_each_kind_of_example():
    kinds = [(lang, "file" in attrs) for lang, attrs, _ in blocks(DOC.read_text())]
    for kind in [("python", True), ("python", False), ("console", False), ("yaml", True), ("toml", True)]:
        assert kind in kinds, kind
    assert "pip install ." in DOC.read_text()


def test_environments_doc_runs_as_written(tmp_path):
    cwd = tmp_path / "project"
    cwd.mkdir()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(tmp_path / "site")}
    for n, (lang, attrs, body) in enumerate(blocks(DOC.read_text())):
        if "file" in attrs:
            (cwd / attrs["file"]).write_text(body)
            if lang == "yaml":
                check_config(cwd / attrs["file"], cwd, env)
        elif lang == "python":
            proc = subprocess.run([sys.executable, "-c", body], cwd=cwd, env=env, capture_output=True, text=True,
                                  timeout=120)
            assert proc.returncode == 0, f"python block {n}:\n{body}\n{proc.stderr}"
        elif lang == "console":
            run_console(body, cwd, env)
