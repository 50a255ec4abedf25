"""Preflight: a model, cluster or env mistake is one `branchrl: error:` line and exit 2 within seconds, before
torch or Ray load (each case runs `branchrl.cli.main` in a fresh process that reports what it imported)."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.yaml")
SCRIPT = textwrap.dedent("""
    import json, sys
    from branchrl.cli import main
    code = main(json.loads(sys.argv[1]))
    print(json.dumps({"code": code, "loaded": [m for m in ("torch", "ray", "transformers") if m in sys.modules]}))
""")


def cases(tmp: Path) -> dict[str, tuple[list[str], dict, str]]:
    """name -> (argv, environment, text the error line must hold)."""
    (tmp / "empty_model").mkdir()
    run = ["run", DEMO, "--out", str(tmp / "out")]
    return {
        "missing local dir": ([*run, "model.path=/no/such/model"], {}, "model.path /no/such/model does not exist"),
        "not a model dir": ([*run, f"model.path={tmp / 'empty_model'}"], {}, "is not an HF model directory"),
        "hub id offline": ([*run, "model.path=Qwen/Qwen2.5-0.5B-Instruct"], {"HF_HUB_OFFLINE": "1"},
                           "HF_HUB_OFFLINE is set; download it where there is network"),
        "hub unreachable": ([*run, "model.path=Qwen/Qwen2.5-0.5B-Instruct"], {"HF_ENDPOINT": "http://127.0.0.1:9"},
                            "the hub (127.0.0.1:9) is unreachable"),
        "auto with no cluster": ([*run, "--address", "auto"], {"RAY_TMPDIR": str(tmp / "no_ray")},
                                 "ray_address=auto but no Ray cluster was started on this machine"),
        "address with no cluster": ([*run, "run.ray_address=127.0.0.1:9"], {}, "no Ray cluster answers at 127.0.0.1:9"),
        "env kwargs left behind": ([*run, "env.name=echo"], {},
                                   "env.name=echo replaces the config's env 'arithmetic', whose env.kwargs (digits=2)"),
        "gpus on a cpu machine": ([*run, "train.gpus=1"], {"CUDA_VISIBLE_DEVICES": ""}, "asks for 1 GPUs"),
        "train from data, no cluster": (["train", DEMO, "--from-data", str(tmp), "--address", "127.0.0.1:9"], {},
                                        "no Ray cluster answers at 127.0.0.1:9"),
    }


@pytest.mark.parametrize("case", ["missing local dir", "not a model dir", "hub id offline", "hub unreachable",
                                  "auto with no cluster", "address with no cluster", "env kwargs left behind",
                                  "gpus on a cpu machine", "train from data, no cluster"])
def test_preflight_is_one_line_exit_2_in_seconds_before_ray(case, tmp_path):
    argv, env, expected = cases(tmp_path)[case]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(argv)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "RAY_ADDRESS": "", **env})
    seconds = time.perf_counter() - t0
    report = json.loads(proc.stdout.splitlines()[-1])
    lines = proc.stderr.splitlines()
    assert report == {"code": 2, "loaded": []}, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("branchrl: error: ") and expected in lines[0], proc.stderr
    assert seconds < 30
    assert not (tmp_path / "out").exists()


def test_a_cached_hub_model_passes_offline_and_turns_the_hub_off(tmp_path, monkeypatch):
    """A hub id in the local cache passes with no hub, and nothing downstream retries against it."""
    from branchrl import preflight

    cache = tmp_path / "hub" / "models--org--tiny"
    (cache / "snapshots" / "abc").mkdir(parents=True)
    (cache / "refs").mkdir()
    (cache / "refs" / "main").write_text("abc")
    (cache / "snapshots" / "abc" / "config.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    code = ("import os; from branchrl import preflight; preflight.model_source('org/tiny'); "
            "print(os.environ['HF_HUB_OFFLINE'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "1", proc.stderr
    assert preflight.hub_unreachable() == "the hub (127.0.0.1:9) is unreachable (ConnectionRefusedError)"


def test_a_running_cluster_passes_and_a_grpc_server_that_is_not_ray_does_not(ray_cluster):
    from branchrl import preflight

    gcs = ray_cluster.get_runtime_context().gcs_address
    t0 = time.perf_counter()
    assert preflight.ray_address(gcs) == gcs
    assert preflight._no_gcs(gcs) is None and time.perf_counter() - t0 < 10
    host, port = gcs.rsplit(":", 1)
    assert preflight._no_grpc(host, int(port)) is None
    assert preflight._no_grpc("127.0.0.1", 9) == "ConnectionRefusedError"
