"""`branchrl plan`: model shapes from configs, the workload read from a real run, plans that are consistent,
the own-hardware plan against what the run measured, the docs' worked example, and bad input.

tests/fixtures/plan_run and plan_run_async hold summary.json, config.yaml and metrics.jsonl of two real runs made
with this version on the 2-core CPU VM: tests/test_run.py's SMALL_RUN (echo env, 2 rollout workers, 1 trainer)
for 10 steps, synchronous and with rollout.max_staleness=1, so these tests need no Ray. Remake them with
`branchrl run CONFIG <SMALL_RUN overrides> run.steps=10 [rollout.max_staleness=1] --out DIR` and copy the three files.
"""

import json
import shutil
from pathlib import Path

import pytest

from branchrl.cli import main
from branchrl.plan import hardware as hw
from branchrl.plan.costs import Efficiencies
from branchrl.plan.plan import assemble, plan_own, plan_target, target_options
from branchrl.plan.shape import load_shape, shape_from_config
from branchrl.plan.split import best
from branchrl.plan.workload import Workload, load_workload

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "tests" / "fixtures" / "plan_run"
ASYNC_RUN = ROOT / "tests" / "fixtures" / "plan_run_async"
MODELS = ROOT / "configs" / "models"
KEYS = {"inference_gpus", "training_gpus", "rollout_train_flop_ratio", "step_seconds", "verified_samples_per_hour",
        "verifier_cpus", "from", "inputs"}


def test_shapes_count_parameters_as_transformers_does():
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from branchrl.models import count_flop_params

    for name in ("qwen2.5-0.5b", "qwen2.5-1.5b"):
        config = json.loads((MODELS / f"{name}.json").read_text())
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
        shape = shape_from_config(config)
        assert shape.params == sum(p.numel() for p in model.parameters())
        assert shape.flop_params == count_flop_params(model)
    seven = load_shape(MODELS / "qwen2.5-7b.json")
    assert round(seven.params / 1e9, 2) == 7.62 and seven.kv_bytes_per_token == 2 * 28 * 4 * 128 * 2


def test_the_workload_is_read_back_from_the_ledger():
    w = load_workload(RUN)
    summary = json.loads((RUN / "summary.json").read_text())
    steps = summary["steps"]
    assert w.decode_tokens * steps == summary["generated_tokens"]
    assert w.leaves * steps == summary["leaves"] and 0 < w.pass_rate <= 1
    # contexts derived from FLOPs: every prefilled or decoded token attends to at least itself
    assert w.prefill_context >= w.prefill_tokens > 0 and w.decode_context >= w.decode_tokens > 0
    assert w.train_context >= w.train_tokens > 0
    two_n, attn = 2 * summary["flop_params"], 4 * summary["layers"] * summary["hidden"]
    assert (two_n * w.decode_tokens + attn * w.decode_context) * steps == pytest.approx(summary["rollout_decode_flops"])


@pytest.mark.parametrize("gpus", [16, 64, 128])
@pytest.mark.parametrize("sites", [1, 2])
def test_gpus_add_up(gpus, sites):
    plan = plan_target(RUN, MODELS / "qwen2.5-7b.json", "h100", gpus, sites, 100.0 if sites == 2 else None)
    assert KEYS <= plan.keys()
    assert plan["inference_gpus"] + plan["training_gpus"] == gpus
    assert plan["inference_gpus"] >= 1 and plan["training_gpus"] >= 2   # 7B's training state needs two H100s
    assert 0 <= plan["rollout_idle_fraction"] < 1 and 0 <= plan["trainer_idle_fraction"] < 1


@pytest.mark.parametrize("model", ["qwen2.5-1.5b", "qwen2.5-7b"])
def test_twice_the_gpus_give_1_6_to_2_2_times_the_verified_samples(model):
    rate = {n: plan_target(RUN, MODELS / f"{model}.json", "h100", n)["verified_samples_per_hour"]
            for n in (32, 64, 128)}
    assert 1.6 <= rate[64] / rate[32] <= 2.2 and 1.6 <= rate[128] / rate[64] <= 2.2


def test_a_smaller_model_is_cheaper_per_sample():
    small, big = (plan_target(RUN, MODELS / f"qwen2.5-{m}.json", "h100", 64) for m in ("1.5b", "7b"))
    assert small["gpu_seconds_per_verified_sample"] < big["gpu_seconds_per_verified_sample"]
    assert small["verified_samples_per_hour"] > big["verified_samples_per_hour"]


def test_a_fixed_step_size_stops_scaling_with_gpus():
    """With --prompts-per-step fixed, more GPUs only shrink each replica's decode batch: the decode cost per token
    goes up (the weights are read for fewer rows), so samples per hour grow far less than the GPUs."""
    fixed = {n: plan_target(RUN, MODELS / "qwen2.5-7b.json", "h100", n, prompts=64) for n in (8, 64)}
    assert fixed[8]["prompts_per_step"] == fixed[64]["prompts_per_step"] == 64
    assert fixed[64]["decode_rows_per_replica"] < fixed[8]["decode_rows_per_replica"]
    assert fixed[64]["verified_samples_per_hour"] < 2 * fixed[8]["verified_samples_per_hour"]


def test_two_sites_report_wan_bytes_both_ways():
    plan = plan_target(RUN, MODELS / "qwen2.5-7b.json", "h100", 64, sites=2, wan_gbps=10.0)
    link, w = plan["wan"], load_workload(RUN)
    # the plan sizes the step to fill the decode batches: the run's bytes per prompt, times its prompts per step
    assert link["bytes_to_trainers_per_step"] == pytest.approx(w.verified_bytes / w.prompts * plan["prompts_per_step"])
    assert link["bytes_to_trainers_per_step"] > 0
    assert link["bytes_to_inference_per_step"] == load_shape(MODELS / "qwen2.5-7b.json").weight_bytes
    assert link["seconds_to_inference_per_step"] == pytest.approx(15_231_233_024 * 8 / 10e9)
    assert plan["step_seconds"] >= link["seconds_to_inference_per_step"]   # a slow link sets the step
    assert link["staleness_needed"] >= 1
    one = plan_target(RUN, MODELS / "qwen2.5-7b.json", "h100", 64)
    assert "wan" not in one and one["step_seconds"] <= plan["step_seconds"]


@pytest.mark.parametrize("run_dir", [RUN, ASYNC_RUN], ids=["sync", "async"])
def test_the_plan_reproduces_its_own_run_within_15_percent(run_dir):
    """Given the run's measured per-step costs (each group's busy seconds, the verify wait, the driver's own work,
    the sync), the step model predicts the run's step time and both groups' idle fractions."""
    run = plan_own(run_dir)["as_run"]
    assert run["step_seconds"] == pytest.approx(run["measured_step_seconds"], rel=0.15)
    assert run["rollout_idle_fraction"] == pytest.approx(run["measured_rollout_idle_fraction"], rel=0.15)
    assert run["trainer_idle_fraction"] == pytest.approx(run["measured_trainer_idle_fraction"], rel=0.15)


def test_the_own_plan_resplits_the_same_devices_no_slower():
    plan = plan_own(RUN)
    assert plan["inference_gpus"] + plan["training_gpus"] == plan["as_run"]["inference"] + plan["as_run"]["train"]
    assert plan["step_seconds"] <= plan["as_run"]["step_seconds"] + 1e-9


def gsm8k_like() -> Workload:
    """docs/PLANNING.md's worked example: 256 prompts of 150 tokens; 4 roots of 400 tokens + 4 forks of 200
    per tree; 3 verified samples of 550 tokens per prompt trained on; max_staleness 1."""
    p, r, c, f = 150, 400, 200, 256
    root_ctx = r * p + r * (r + 1) // 2
    fork_ctx = c * (p + c) + c * (c + 1) // 2
    zero = dict.fromkeys(("rollout_flops", "train_flops", "weight_bytes_per_sync", "rollout_devices", "train_devices",
                          "rollout_seconds", "rollout_busy_device_seconds", "train_busy_device_seconds",
                          "verify_seconds", "sync_seconds", "driver_seconds", "wall_seconds", "trainer_idle_fraction",
                          "rollout_idle_fraction", "recompute_passes", "reference_passes",
                          "fork_saved_prefill_tokens"), 0)
    return Workload(steps=1, max_staleness=1, prompts=f, leaves=8 * f, pass_rate=0.5, verified_samples=3 * f,
                    prefill_tokens=p * f, prefill_context=f * p * (p + 1) // 2, decode_tokens=f * (4 * r + 4 * c),
                    decode_context=f * (4 * root_ctx + 4 * fork_ctx), train_tokens=3 * f * (p + r),
                    train_context=3 * f * (p + r) * (p + r + 1) // 2, checkpointing=False,
                    verified_bytes=3 * f * 3000, verifier_cpu_seconds_per_leaf=0.003, **zero)


def test_the_docs_worked_example():
    w, h100 = gsm8k_like(), hw.GPUS["h100"]
    options = target_options(w, load_shape(MODELS / "qwen2.5-7b.json"), h100, Efficiencies(), 64, None)
    wi, c, p = best(options)
    per_prompt = [x / wi.prompts for x in (c.inference_device_seconds, c.train_device_seconds)]
    assert [round(x, 4) for x in per_prompt] == [0.2496, 0.2098] and c.rows == 256
    assert round(c.sync_seconds, 3) == 0.305 and c.min_train_devices == 2
    assert round(c.rollout_flops / c.train_flops, 2) == 0.52
    one = assemble(wi, c, p, 1, None, {"inputs": {}})
    assert (one["inference_gpus"], one["training_gpus"], wi.prompts) == (35, 29, 1120)
    assert (round(p.rollout_seconds, 2), round(p.train_seconds, 2), round(one["step_seconds"], 2)) == (7.99, 8.10, 8.41)
    assert round(one["verified_samples_per_hour"] / 1e6, 2) == 1.44 and one["verifier_cpus"] == 4
    rate = {i.inference: x.verified_samples / i.step_seconds for x, _, i in options}
    assert rate[35] > max(rate[34], rate[36])
    two = assemble(wi, c, p, 2, 100.0, {"inputs": {}})["wan"]
    assert round(two["seconds_to_inference_per_step"], 2) == 1.22 and two["bytes_to_trainers_per_step"] == 10_080_000
    assert round(two["step_seconds"], 2) == 8.41 and two["staleness_needed"] == 2
    slow = assemble(wi, c, p, 2, 10.0, {"inputs": {}})
    assert round(slow["step_seconds"], 1) == 12.2 and round(slow["verified_samples_per_hour"] / 1e6, 2) == 0.99
    small = assemble(*best(target_options(w, load_shape(MODELS / "qwen2.5-1.5b.json"), h100, Efficiencies(), 64,
                                          None)), 1, None, {"inputs": {}})
    assert (round(small["gpu_seconds_per_verified_sample"], 3), round(one["gpu_seconds_per_verified_sample"], 3)) == (
        0.040, 0.160)
    doc = (ROOT / "docs" / "PLANNING.md").read_text()
    for quoted in ("0.2496 device-seconds", "0.2098 device-seconds", "**step 8.41 s**", "**1.44 M verified",
                   "**0.52**", "0.040 GPU-seconds", "0.160", "10.1 MB", "12.2 s", "0.99 M"):
        assert quoted in doc, quoted


def test_cli_writes_plan_json(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["plan", str(RUN), "--model", str(MODELS / "qwen2.5-7b.json"), "--gpu", "h200", "--gpus", "16",
                 "--sites", "2", "--wan-gbps", "50", "--train-mfu", "0.4", "--out", str(out)]) == 0
    plan = json.loads(out.read_text())
    assert KEYS <= plan.keys() and "wan" in plan and plan["gpus"] == 16
    assert plan["inputs"]["hardware"]["name"] == "H200 SXM"
    assert plan["inputs"]["efficiencies"]["train_mfu"]["value"] == 0.4
    assert "staleness to hide the WAN" in capsys.readouterr().out
    assert main(["plan", str(RUN)]) == 0   # own hardware
    assert "rollout_train_flop_ratio" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--model", "M", "--gpu", "tpu", "--gpus", "8"], "unknown --gpu 'tpu'"),
    (["--model", "M"], "give --model and --gpu together"),
    (["--model", "M", "--gpu", "h100"], "--gpus N"),
    (["--model", "M", "--gpu", "h100", "--gpus", "0"], "--gpus N"),
    (["--model", "M", "--gpu", "h100", "--gpus", "2"], "--gpus 2 cannot hold"),
    (["--model", "M", "--gpu", "h100", "--gpus", "8", "--sites", "2"], "--sites 2 needs --wan-gbps"),
    (["--model", "M", "--gpu", "h100", "--gpus", "8", "--sites", "3", "--wan-gbps", "1"], "--sites 3"),
    (["--model", "M", "--gpu", "h100", "--gpus", "8", "--train-mfu", "0"], "must be > 0"),
    (["--model", "nowhere.json", "--gpu", "h100", "--gpus", "8"], "no config.json there"),
    (["--prompts-per-step", "4"], "--prompts-per-step N"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, capsys):
    args = [str(MODELS / "qwen2.5-7b.json") if a == "M" else a for a in args]
    assert main(["plan", str(RUN), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_run_without_the_complete_ledger_is_refused(tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(RUN, old)
    summary = json.loads((old / "summary.json").read_text())
    del summary["rollout_busy_device_seconds"]
    (old / "summary.json").write_text(json.dumps(summary))
    assert main(["plan", str(old)]) == 2
    assert "written before the complete ledger" in capsys.readouterr().err
    assert main(["plan", str(tmp_path / "none")]) == 2


def test_report_shows_the_own_plan_and_the_device_seconds_plot(tmp_path):
    from branchrl.data.report import write_report

    run = tmp_path / "run"
    shutil.copytree(RUN, run)
    text = write_report(run).read_text()
    assert "## Plan for this run's own hardware" in text and "| step seconds |" in text
    assert (run / "devices.png").stat().st_size > 0
