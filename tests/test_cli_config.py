"""`branchrl config [CONFIG] [KEY=VALUE ...]`: every key with its value, default and description, instantly (no
torch, no Ray); a bad config is the usual one-line error."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from branchrl.config import Config, describe, load_config

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.yaml")


def config_command(*argv: str) -> subprocess.CompletedProcess:
    script = textwrap.dedent("""
        import json, sys
        from branchrl.cli import main
        code = main(json.loads(sys.argv[1]))
        print(json.dumps({"code": code, "loaded": [m for m in ("torch", "ray") if m in sys.modules]}))
    """)
    return subprocess.run([sys.executable, "-c", script, json.dumps(["config", *argv])], capture_output=True,
                          text=True, timeout=60)


def test_every_key_is_listed_with_value_default_and_description():
    proc = config_command(DEMO, "run.steps=7")
    *lines, report = proc.stdout.splitlines()
    assert json.loads(report) == {"code": 0, "loaded": []}, proc.stderr
    rows = describe(load_config(DEMO, ["run.steps=7"]))
    assert len(lines) == 1 + len(rows) and lines[0].split() == ["KEY", "VALUE", "DEFAULT", "DESCRIPTION"]
    assert {line.split()[0] for line in lines[1:]} == {key for key, *_ in rows}
    steps = next(line for line in lines if line.startswith("run.steps "))
    assert steps.split()[:4] == ["run.steps", "*", "7", "10"] and "RL steps" in steps
    kwargs = next(line for line in lines if line.startswith("env.kwargs "))
    assert '{"digits": 2}' in kwargs and "keyword arguments" in kwargs
    assert all(text for *_, text in describe(Config())), "every field has a description"


def test_defaults_alone_and_a_bad_override():
    proc = config_command("track.samples=2")
    assert json.loads(proc.stdout.splitlines()[-1])["code"] == 0
    assert next(line for line in proc.stdout.splitlines() if line.startswith("track.samples ")).split()[1:4] == [
        "*", "2", "4"]
    bad = config_command(DEMO, "run.step=3")
    assert json.loads(bad.stdout.splitlines()[-1]) == {"code": 2, "loaded": []}
    assert bad.stderr.strip() == "branchrl: error: unknown config key 'run.step'; did you mean 'run.steps'?"
