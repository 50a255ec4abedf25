"""The package as a user installs it: build the wheel from a copy of the sources, install it (not editable) into
a fresh venv, and from a folder outside the checkout run `branchrl verify` and one step of the demo config.
Every subpackage must be in the wheel (a missing one fails inside a Ray actor, not at import).

The fresh venv borrows this venv's site-packages (a .pth line: its .pth files, among them the editable
install of the checkout, are not processed), so nothing is downloaded; the wheel's own branchrl comes first."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("rl", "verifiers", "envs", "pyproject.toml", "setup.py", "README.md")


def _build_wheel(tmp: Path) -> Path:
    src, dist = tmp / "src", tmp / "dist"
    for name in SOURCES:   # a copy: the build writes build/ and *.egg-info next to the sources
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                         if (ROOT / name).is_dir() else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "--disable-pip-version-check", "-w", str(dist), str(src)], check=True, timeout=300)
    return next(dist.glob("branchrl-*.whl"))


def _fresh_venv(tmp: Path, wheel: Path) -> Path:
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet",
                    "--disable-pip-version-check", str(wheel)], check=True, timeout=300)
    return venv


def test_the_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    wheel = _build_wheel(tmp_path)
    listed = {Path(n).parent.as_posix().replace("/", ".") for n in zipfile.ZipFile(wheel).namelist()
              if n.endswith("__init__.py")}
    on_disk = {"branchrl" + (f".{p.parent.relative_to(ROOT / 'rl').as_posix().replace('/', '.')}"
                             if p.parent != ROOT / "rl" else "") for p in (ROOT / "rl").rglob("__init__.py")}
    assert on_disk <= listed and {"branchrl.verifiers", "branchrl.envs", "branchrl.rollout.policies"} <= listed
    venv = _fresh_venv(tmp_path, wheel)
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([venv / "bin" / "python", "-c", "import branchrl; print(branchrl.__file__)"], cwd=work,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(venv)), where

    records = work / "in.jsonl"
    records.write_text(json.dumps({"verifier": "math", "completion": "so \\boxed{12}", "answer": "12"}) + "\n")
    verify = subprocess.run([venv / "bin" / "branchrl", "verify", "in.jsonl"], cwd=work, capture_output=True,
                            text=True, timeout=120)
    assert verify.returncode == 0, verify.stderr
    assert json.loads(verify.stdout)["verdict"] == "pass"

    shutil.copy(ROOT / "configs" / "demo.yaml", work / "demo.yaml")
    run = subprocess.run([venv / "bin" / "branchrl", "run", "demo.yaml", "--out", "out", "run.steps=1",
                          "warm_start.problems=0", "eval.problems=4", "eval.every=0", "rollout.prompts_per_step=4",
                          "rollout.max_new_tokens=8"], cwd=work, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "RAY_ADDRESS": ""})
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((work / "out" / "summary.json").read_text())
    assert summary["steps"] == 1 and summary["generated_tokens"] > 0
