"""Real HF-format models through `model.path`: the tiny Qwen chat model scripts/make_tiny_hf_model.py builds (a
byte-level BPE trained here, a ChatML template), its template applied to every prompt, and runs of gsm8k (math
verifier, local data) and synth_fn (python_tests verifier, sandboxed) on real Ray actors."""

import importlib.util
import json
from pathlib import Path

import pytest

from branchrl.config import ConfigError, load_config
from branchrl.envs import load_env
from branchrl.loop import run
from branchrl.models import build_char_tokenizer, load_tokenizer
from branchrl.prompts import render, templated

ROOT = Path(__file__).resolve().parents[1]
GSM8K = str(ROOT / "tests" / "fixtures" / "data" / "gsm8k")
SMALL = ["run.steps=2", "eval.problems=4", "eval.every=0", "rollout.prompts_per_step=3", "rollout.max_new_tokens=24",
         "rollout.max_batches_per_step=1", "branch.roots=2", "branch.max_leaves=3", "train.threads=1"]


def make_model(out: Path, *args: str) -> Path:
    spec = importlib.util.spec_from_file_location("make_tiny_hf_model", ROOT / "scripts" / "make_tiny_hf_model.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(out), *args]) == 0
    return out


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("models") / "qwen2")


def test_the_built_model_loads_as_a_chat_model_and_the_prompt_is_the_user_turn(qwen2):
    cfg = load_config(None, [f"model.path={qwen2}", "model.system_prompt=Be brief."])
    tokenizer = load_tokenizer(cfg.model)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.decode(tokenizer.encode("héllo\n  x")) == "héllo\n  x"
    shown = render(tokenizer, cfg.model, "2+2?")
    assert shown == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert render(tokenizer, load_config(None, [f"model.path={qwen2}", "model.chat_template=none"]).model,
                  "2+2?") == "2+2?"
    env = templated(load_env("gsm8k", path=GSM8K), tokenizer, cfg.model)
    raw = load_env("gsm8k", path=GSM8K)
    assert [p.prompt for p in env.eval_problems(3)] == [render(tokenizer, cfg.model, p.prompt)
                                                       for p in raw.eval_problems(3)]
    assert env.answer_marker == "####" and env.verifier == "math"


def test_a_system_prompt_needs_a_template():
    with pytest.raises(ConfigError, match="model.system_prompt needs model.chat_template=auto"):
        load_config(None, ["model.chat_template=none", "model.system_prompt=hi"])
    cfg = load_config(None, ["model.system_prompt=hi"])   # the tiny char model has no chat template
    with pytest.raises(ConfigError, match="has no chat template to put it in"):
        templated(load_env("arithmetic"), build_char_tokenizer(), cfg.model)


def samples(run_dir: Path) -> list[dict]:
    return [json.loads(line) for path in sorted((run_dir / "samples").glob("*.jsonl"))
            for line in path.read_text().splitlines()]


def test_gsm8k_runs_through_model_path_with_the_template_applied(ray_cluster, qwen2, tmp_path):
    cfg = load_config(ROOT / "configs" / "gsm8k_tiny_hf.yaml", [f"model.path={qwen2}", f"env.kwargs.path={GSM8K}",
                                                                 *SMALL])
    summary = run(cfg, tmp_path / "out")
    assert summary["steps"] == 2 and summary["generated_tokens"] > 0
    rows = samples(tmp_path / "out")
    assert rows and all(r["prompt"].startswith("<|im_start|>system\nYou are a careful math tutor.<|im_end|>\n"
                                               "<|im_start|>user\nSolve the following math problem")
                        and r["prompt"].endswith("<|im_end|>\n<|im_start|>assistant\n") for r in rows)
    assert {r["verdict"] for r in rows} <= {"pass", "fail"}
    final = tmp_path / "out" / "checkpoints" / "final"
    assert load_tokenizer(load_config(None, [f"model.path={final}"]).model).chat_template   # the template travels


def test_a_python_tests_env_runs_through_model_path_on_qwen3(ray_cluster, tmp_path):
    model = make_model(tmp_path / "qwen3", "--arch", "qwen3")
    cfg = load_config(None, ["env.name=synth_fn", f"model.path={model}", *SMALL])
    summary = run(cfg, tmp_path / "out")
    assert summary["steps"] == 2
    rows = samples(tmp_path / "out")
    assert rows and all(r["prompt"].startswith("<|im_start|>user\n") for r in rows)
    assert {r["verdict"] for r in rows} <= {"pass", "fail", "timeout", "memory"}   # checked, none an error
