"""`branchrl plan`: a run's measured workload, priced for a model and a cluster, split between the groups.

`plan_target` prices the run's workload for another model on N GPUs of a listed kind (costs.target_costs);
`plan_own` calibrates from the run's own measured seconds and re-splits its own devices (what `branchrl
report` shows: what to change so neither group idles). Both return the plan as a dict (plan.json): the split,
`rollout_train_flop_ratio`, `step_seconds`, `verified_samples_per_hour`, `verifier_cpus`, idle fractions and,
for two sites, the WAN bytes and seconds each way and the staleness that hides them; `from` says which inputs
each figure came from, `inputs` holds them with their sources. It writes nothing.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

from branchrl.config import ConfigError

from . import hardware as hw
from .costs import Costs, Efficiencies, decode_batch, inference_unit, min_train_devices, own_costs, target_costs
from .shape import load_shape
from .split import Prediction, best, choices, predict
from .workload import Workload, load_workload

SOURCES = {"decode_efficiency": hw.DECODE_EFFICIENCY_SOURCE, "prefill_mfu": hw.PREFILL_MFU_SOURCE,
           "train_mfu": hw.TRAIN_MFU_SOURCE, "decode_batch": hw.DECODE_BATCH_SOURCE, "net_gbps": hw.NET_GBPS_SOURCE}


def plan_target(run_dir: str | Path, model: str | Path, gpu_name: str, gpus: int, sites: int = 1,
                wan_gbps: float | None = None, eff: Efficiencies = Efficiencies(), prompts: int | None = None) -> dict:
    """prompts: per step; default, for each split, what fills every inference replica's decode batch once (one
    wave of full batches per step), or as many waves as it takes for a step to outlast the weights' WAN trip."""
    check_sites(sites, wan_gbps)
    w, shape, gpu = load_workload(run_dir), load_shape(model), hw.gpu(gpu_name)
    link = shape.weight_bytes * 8 / (wan_gbps * 1e9) if sites == 2 else 0.0   # a step must outlast the weights' trip
    w_best, c, p = best(target_options(w, shape, gpu, eff, gpus, prompts, min_step=link))
    inputs = {"run": str(run_dir), "model": {**asdict(shape), "weight_bytes": shape.weight_bytes},
              "hardware": asdict(gpu), "efficiencies": {k: {"value": v, "source": SOURCES[k]}
                                                        for k, v in asdict(eff).items()},
              "prompts_per_step": prompts or "fill every replica's decode batch once per step"}
    extra = {"mode": "target", "inputs": inputs, "prompts_per_step": w_best.prompts,
             "decode_rows_per_replica": c.rows, "inference_replica_gpus": c.inference_unit}
    return assemble(w_best, c, p, sites, wan_gbps, extra)


def target_options(w: Workload, shape, gpu: hw.Gpu, eff: Efficiencies, devices: int, prompts: int | None,
                   min_step: float = 0.0) -> list[tuple[Workload, Costs, Prediction]]:
    """Every split of `devices`, each with its prompts per step, its costs and its predicted step."""
    unit = inference_unit(shape, gpu)
    cap = decode_batch(shape, gpu, unit, w.sequence_length, eff.decode_batch)
    per_prompt = w.leaves / w.prompts
    out = []
    for i in choices(devices, unit, min_train_devices(shape, gpu)):
        replicas = i // unit

        def priced(n: float) -> tuple[Workload, Costs, Prediction]:
            wi = w.scaled(n)
            c = target_costs(wi, shape, gpu, eff, rows=max(1, min(cap, math.ceil(wi.leaves / replicas))))
            return wi, c, predict(c, i, devices - i, w.max_staleness)

        wave = prompts or max(1, round(replicas * cap / per_prompt))
        option, waves = priced(wave), 1
        while not prompts and option[2].step_seconds < min_step and waves < 10**6:   # more waves of full batches
            waves += max(1, int(waves * (min_step / option[2].step_seconds - 1)))
            option = priced(wave * waves)
        out.append(option)
    return out


def plan_own(run_dir: str | Path, gpus: int | None = None, sites: int = 1, wan_gbps: float | None = None) -> dict:
    """Calibrated on the run's own hardware: its measured per-step seconds; `as_run` predicts the run itself
    (its own split), next to what it measured; the plan re-splits its devices (or `gpus` of them)."""
    check_sites(sites, wan_gbps)
    w = load_workload(run_dir)
    c = own_costs(w)
    devices = gpus or round(w.rollout_devices + w.train_devices)
    as_run = predict(c, w.rollout_devices, w.train_devices, w.max_staleness)
    _, _, p = best([(w, c, predict(c, i, devices - i, w.max_staleness)) for i in choices(devices, 1, 1)])
    extra = {"mode": "own", "inputs": {"run": str(run_dir)},
             "as_run": {**asdict(as_run), "measured_step_seconds": w.wall_seconds,
                        "measured_rollout_idle_fraction": w.rollout_idle_fraction,
                        "measured_trainer_idle_fraction": w.trainer_idle_fraction}}
    return assemble(w, c, p, sites, wan_gbps, extra)


def check_sites(sites: int, wan_gbps: float | None) -> None:
    if sites not in (1, 2):
        raise ConfigError(f"--sites {sites}: plan for 1 site or 2 (inference in one, training in the other)")
    if sites == 2 and not (wan_gbps and wan_gbps > 0):
        raise ConfigError("--sites 2 needs --wan-gbps G, the link's bandwidth between the sites in Gb/s (> 0)")


def assemble(w: Workload, c: Costs, p: Prediction, sites: int, wan_gbps: float | None, extra: dict) -> dict:
    link = wan(w, c, p, wan_gbps) if sites == 2 else None
    step = link["step_seconds"] if link else p.step_seconds
    devices = p.inference + p.train
    out = {"gpus": devices, "inference_gpus": p.inference, "training_gpus": p.train, "sites": sites,
           "rollout_train_flop_ratio": c.rollout_flops / c.train_flops if c.train_flops else None,
           "step_seconds": step, "rollout_seconds": p.rollout_seconds, "train_seconds": p.train_seconds,
           "sync_seconds": c.sync_seconds, "verify_seconds": c.verify_seconds, "driver_seconds": c.driver_seconds,
           "rollout_idle_fraction": 1 - c.inference_device_seconds / (p.inference * step),
           "trainer_idle_fraction": 1 - p.train_seconds / step, "max_staleness": w.max_staleness,
           "verified_samples_per_step": w.verified_samples,
           "verified_samples_per_hour": w.verified_samples * 3600 / step,
           "gpu_seconds_per_verified_sample": devices * step / w.verified_samples if w.verified_samples else None,
           "verifier_cpus": max(1, math.ceil(w.leaves * w.verifier_cpu_seconds_per_leaf / step)),
           "rollout_flops_per_step": c.rollout_flops, "train_flops_per_step": c.train_flops}
    out["bound_by"] = bound_by(c, p, w.max_staleness, link)
    if link:
        out["wan"] = link
    out["from"] = provenance(w, c, link)
    out.update(extra)
    out["inputs"]["workload"] = asdict(w)
    return out


def bound_by(c: Costs, p: Prediction, staleness: int, link: dict | None) -> str:
    """What sets the step: the WAN link, or the longest part of the step model's critical path."""
    if link and link["step_seconds"] > p.step_seconds:
        return "wan: the weights' trip between the sites"
    parts = {"rollout": p.rollout_seconds, "verify": c.verify_seconds, "driver": c.driver_seconds,
             "train": p.train_seconds, "sync": c.sync_seconds}
    if staleness and p.rollout_seconds >= c.verify_seconds + c.driver_seconds + p.train_seconds:
        return "rollout lane (the training lane waits)"
    if staleness:
        parts.pop("rollout")
    top = max(parts, key=parts.get)
    return f"{top} ({parts[top]:.3g} s of a {p.step_seconds:.3g} s step)"


def wan(w: Workload, c: Costs, p: Prediction, gbps: float) -> dict:
    """Inference in one site, training in the other: verified data one way, weights the other, per step."""
    to_trainers, to_inference = w.verified_bytes, c.weight_bytes
    there, back = to_trainers * 8 / (gbps * 1e9), to_inference * 8 / (gbps * 1e9)
    step = max(p.step_seconds, there, back)
    return {"gbps": gbps, "bytes_to_trainers_per_step": to_trainers, "bytes_to_inference_per_step": to_inference,
            "seconds_to_trainers_per_step": there, "seconds_to_inference_per_step": back, "step_seconds": step,
            "link_busy_fraction": max(there, back) / step,
            "staleness_needed": max(1, math.ceil((there + p.train_seconds + back + c.sync_seconds) / step))}


def provenance(w: Workload, c: Costs, link: dict | None) -> dict:
    run = f"the run's {w.steps} steps"
    out = {"rollout_train_flop_ratio": f"ledger FLOP formulas on the target shape over {run}' tokens and context",
           "inference_gpus": f"most verified samples per second over every split at max_staleness {w.max_staleness}"
                             " (split.py)",
           "step_seconds": "step model (split.py) on: " + "; ".join(f"{k}: {v}" for k, v in c.notes.items()),
           "verified_samples_per_hour": f"{w.verified_samples:.3g} verified samples per step ({run}) / step_seconds",
           "verifier_cpus": f"{w.leaves:.3g} leaves per step x {w.verifier_cpu_seconds_per_leaf * 1e3:.3g} ms "
                            f"verifier CPU per leaf ({run}) / step_seconds"}
    out["training_gpus"] = out["inference_gpus"]
    if link:
        out["wan"] = (f"{w.verified_bytes:.3g} B verified data per step ({run}) and one bf16 copy of the weights "
                      f"per step, at {link['gbps']:g} Gb/s")
    return out


def table(plan: dict) -> str:
    """The short table `branchrl plan` prints."""
    split = f"{plan['gpus']:g} = {plan['inference_gpus']:g} + {plan['training_gpus']:g}"
    rows = [("gpus (inference + training)", split),
            ("rollout_train_flop_ratio", _fmt(plan["rollout_train_flop_ratio"])),
            ("step_seconds", _fmt(plan["step_seconds"])),
            ("idle: rollout / trainer", f"{plan['rollout_idle_fraction']:.0%} / {plan['trainer_idle_fraction']:.0%}"),
            ("verified_samples_per_hour", _fmt(plan["verified_samples_per_hour"])),
            ("verifier_cpus", str(plan["verifier_cpus"])), ("bound by", plan["bound_by"])]
    if "wan" in plan:
        x = plan["wan"]
        rows += [("WAN to trainers / to inference per step",
                  f"{x['bytes_to_trainers_per_step'] / 1e6:.3g} MB ({x['seconds_to_trainers_per_step']:.3g} s) / "
                  f"{x['bytes_to_inference_per_step'] / 1e9:.3g} GB ({x['seconds_to_inference_per_step']:.3g} s)"),
                 ("staleness to hide the WAN", str(x["staleness_needed"]))]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4g}"
