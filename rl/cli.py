"""`branchrl` command line: `run` a config, `generate` a data set from a fixed policy, `train` on a stored data set,
`verify` a JSONL file, `report` a run, `plan` a cluster for a run's workload; `config` shows every key, `envs`,
`verifiers` and `env check` show what is registered and check an environment.

Parses arguments before importing torch or ray, so `branchrl --help` is instant. Every user error
(bad config, unknown env, missing file, a data set that is empty or does not match its manifest, a
cluster that cannot host the run) becomes one line on stderr and exit code 2; our own bugs still
raise with a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

USER_ERROR = 2


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # overrides may come after options too (`run demo.yaml --out d run.steps=3`): collect them here
    if extra and (not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("branchrl: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if _is_user_error(e):
            message = " ".join(str(e).split())  # exactly one line, whatever the exception text holds
            print(f"branchrl: error: {message}", file=sys.stderr)
            return USER_ERROR
        raise


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="branchrl", description="Branched, verified RL synthetic data for reasoning models, on Ray.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="generate, branch, verify, prune and train, as a config says",
                         description="Run a config end to end; overrides look like section.key=value. "
                                     "`run --resume RUN_DIR` continues a killed run from its last step checkpoint.")
    _add_launch_args(run, "YAML run config, e.g. configs/demo.yaml", "run.steps=5", "run directory")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue this killed run (its own config.yaml) from its "
                                                         "last step checkpoint (run.checkpoint_every); overrides may "
                                                         "only reshape the training group, e.g. train.workers=1")
    run.set_defaults(handler=_run)
    _add_generate(sub)
    train = sub.add_parser("train", help="fine-tune the configured policy on a stored verified data set (no sampling)",
                           description="SFT on every stored (prompt, completion) for train.epochs passes at train.lr; "
                                       "held-out pass@1 before and after, as `run` measures it.")
    train.add_argument("config", help="YAML run config: model, env (for eval), train.epochs/lr/batch_size")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.epochs=3")
    train.add_argument("--from-data", required=True, metavar="DIR", help="a run directory or its data/ directory")
    train.add_argument("--out", help="output directory (default: runs/<run.name>-<time>)")
    train.add_argument("--address", help="join a running Ray cluster ('auto'); default: embedded local Ray")
    train.add_argument("--verbose", action="store_true", help="show Ray's start-up warnings and loading progress")
    train.set_defaults(handler=_train)
    verify = sub.add_parser("verify", help="verify JSONL records (the branchrl verify format); results on stdout",
                            description="Verify one JSON record per line ('-' = stdin).")
    verify.add_argument("file", help="JSONL file of records, or - for stdin")
    verify.add_argument("--jobs", type=int, default=1, help="records checked at once (default 1)")
    verify.add_argument("--strict", action="store_true", help="exit 1 when any record is an error")
    verify.set_defaults(handler=_verify)
    report = sub.add_parser("report", help="Markdown summary and PNG plots of a run directory",
                            description="Write report.md, learning.png, compute.png and trees.png into RUN_DIR.")
    report.add_argument("run_dir", help="a branchrl run directory (holds metrics.jsonl)")
    report.set_defaults(handler=_report)
    _add_plan_command(sub)
    _add_registry_commands(sub)
    return parser


def _add_launch_args(cmd, config_help: str, example: str, out_help: str) -> None:
    """The arguments of a command that launches Ray roles from a config (`run`, `generate`)."""
    cmd.add_argument("config", nargs="?", help=config_help)
    cmd.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=f"dotted overrides, e.g. {example}")
    cmd.add_argument("--out", help=f"{out_help} (default: runs/<run.name>-<time>)")
    cmd.add_argument("--address", help="join a running Ray cluster ('auto'); default: embedded local Ray")
    cmd.add_argument("--verbose", action="store_true", help="show Ray's start-up warnings and loading progress")


def _add_plan_command(sub) -> None:
    plan = sub.add_parser("plan", help="size a cluster for a run's workload: GPUs per group, step time, WAN",
                          description="Price RUN_DIR's measured workload for a model on N GPUs (a roofline: decode "
                                      "reads weights + KV, prefill and training at an MFU) and split them between "
                                      "inference and training. Without --model and --gpu: the run's own hardware, "
                                      "calibrated from its measured seconds. See docs/PLANNING.md.")
    plan.add_argument("run_dir", help="a finished branchrl run directory (summary.json, config.yaml, metrics.jsonl)")
    plan.add_argument("--model", help="the target model: an HF config.json or model directory (e.g. "
                                      "configs/models/qwen2.5-7b.json)")
    plan.add_argument("--gpu", help="target GPU: a100, h100, h200 or b200")
    plan.add_argument("--gpus", type=int, help="GPUs in all (with --model); default in own mode: the run's devices")
    plan.add_argument("--sites", type=int, default=1, help="2 = inference in one site, training in another")
    plan.add_argument("--wan-gbps", type=float, help="bandwidth between the two sites, Gb/s (with --sites 2)")
    plan.add_argument("--out", help="write the plan as JSON here (e.g. plan.json)")
    plan.add_argument("--prompts-per-step", type=int, help="with --model: prompts per step (default: what fills "
                                                           "every inference replica's decode batch once)")
    for flag, what in (("--decode-efficiency", "share of the HBM read floor decode reaches"),
                       ("--prefill-mfu", "prefill MFU"), ("--train-mfu", "training MFU"),
                       ("--decode-batch", "rows a replica decodes at once (at most)"),
                       ("--net-gbps", "weight-broadcast bandwidth inside a site, Gb/s")):
        plan.add_argument(flag, type=float, help=f"{what} (default: see docs/PLANNING.md)")
    plan.set_defaults(handler=_plan)


def _add_generate(sub) -> None:
    gen = sub.add_parser("generate", help="a verified data set from a fixed policy: rollout workers and verifiers "
                                          "only, no training",
                         description="Walk the env's problems (generate.split, generate.problems) once with the policy "
                                     "model.path (e.g. a run's checkpoints/final) or the tiny model, fixed; each until "
                                     "it has generate.per_problem distinct verified samples or has spent "
                                     "generate.max_leaves_per_problem leaves. Writes run's data set (data/, "
                                     "data_manifest.json) and summary.json. `generate --resume OUT_DIR` continues a "
                                     "stopped or killed walk without sampling a done problem again.")
    _add_launch_args(gen, "YAML config: model, env, rollout, branch, verify, generate", "generate.per_problem=8",
                     "output directory")
    gen.add_argument("--resume", metavar="OUT_DIR", help="continue this walk with its own config.yaml; overrides may "
                                                         "only be run.steps and rollout/verify worker placement")
    gen.set_defaults(handler=_generate)


def _add_registry_commands(sub) -> None:
    config = sub.add_parser("config", help="every config key with its value, default and description",
                            description="Print every config key: its value (from CONFIG and the overrides, else the "
                                        "default), its default and what it does; * marks a value that differs.")
    config.add_argument("config", nargs="?", help="YAML run config (default: the defaults alone)")
    config.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. run.steps=5")
    config.set_defaults(handler=_config)
    sub.add_parser("envs", help="list the registered environments (built-ins and entry points)").set_defaults(
        handler=_envs)
    sub.add_parser("verifiers", help="list the registered verifiers (built-ins and entry points)").set_defaults(
        handler=_verifiers)
    env = sub.add_parser("env", help="check an environment: `branchrl env check NAME [KEY=VALUE ...]`")
    check = env.add_subparsers(dest="action", required=True, metavar="ACTION").add_parser(
        "check", help="disjoint splits and passing worked solutions",
        description="Draw eval, warm-start and train problems (several seeds), report any problem two splits "
                    "share, and verify every warm-start problem's worked solution; exit 1 on any failure.")
    check.add_argument("name", help="env name, entry point, dotted path 'pkg.module[:fn]' or a .py file")
    check.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="load_environment() arguments (YAML values)")
    check.add_argument("--problems", type=int, default=50, help="problems drawn per split and seed (default 50)")
    check.add_argument("--seeds", type=int, default=3, help="seeds drawn for warm-start and train (default 3)")
    check.set_defaults(handler=_env_check)


def _run(args) -> int:
    from . import interrupt, preflight
    from .config import ConfigError

    if args.resume:
        # `run --resume DIR k=v` parses k=v as the config argument
        overrides = [*([args.config] if args.config else []), *args.overrides]
        if args.out or any("=" not in x for x in overrides):
            raise ConfigError("--resume RUN_DIR takes no config or --out: the run continues with its own config.yaml, "
                              "in its own directory")
        preflight.resumable(Path(args.resume), overrides, args.address)  # one-line errors before Ray starts
        from .loop import resume  # torch and ray load only once the run dir is known good

        return interrupt.exit_code(resume(Path(args.resume), args.address, overrides, args.verbose))
    if not args.config:
        raise ConfigError("branchrl run needs a config file (e.g. configs/demo.yaml) or --resume RUN_DIR")
    cfg, out = resolve_run(args)
    preflight.inputs(cfg, out)  # one-line errors before torch and ray take seconds to import
    from .loop import run  # torch and ray load only once the config is known to be good

    return interrupt.exit_code(run(cfg, out, address=cfg.run.ray_address))


def _generate(args) -> int:
    from .config import ConfigError, check_generate_resume

    if args.resume:
        overrides = [*([args.config] if args.config else []), *args.overrides]   # `--resume DIR k=v`: k=v is `config`
        if args.out:
            raise ConfigError("--resume OUT_DIR takes no --out: the walk continues in its own directory")
        check_generate_resume(overrides)
        out = Path(args.resume)
        if not (out / "config.yaml").is_file():
            raise ConfigError(f"{out} holds no config.yaml; pass the --out dir of a `branchrl generate`")
        from .generate import resume  # torch and ray load only once the dir is known good

        resume(out, address=args.address, overrides=overrides)
        return 0
    if not args.config:
        raise ConfigError("branchrl generate needs a config file (e.g. configs/demo.yaml) or --resume OUT_DIR")
    cfg, out = resolve_run(args)
    from . import preflight

    preflight.inputs(cfg, None)  # one-line errors before torch and ray import (generate checks the out dir itself)
    from .generate import generate

    generate(cfg, out, address=cfg.run.ray_address)
    return 0


def _train(args) -> int:
    from . import interrupt, preflight

    cfg, out = resolve_run(args)
    data = preflight.training_data(cfg, out, Path(args.from_data))
    from .from_data import train_from_data  # torch and ray load only once config and data dir are known good

    return interrupt.exit_code(train_from_data(cfg, data, out, address=cfg.run.ray_address))


def resolve_run(args):
    """(config, run dir) for `branchrl run` and `train`, with --address folded into the config the run saves."""
    from .config import load_config

    cfg = load_config(args.config, args.overrides)
    if args.address:
        cfg.run.ray_address = args.address
    if args.verbose:
        cfg.run.verbose = True
    out = Path(args.out) if args.out else Path("runs") / f"{cfg.run.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return cfg, out


def _config(args) -> int:
    import json

    from .config import describe, load_config

    if args.config and "=" in args.config and not Path(args.config).exists():  # `config k=v`: no file, overrides
        args.config, args.overrides = None, [args.config, *args.overrides]
    rows = [(key, json.dumps(value), json.dumps(default), "*" if value != default else " ", text)
            for key, value, default, text in describe(load_config(args.config, args.overrides))]
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    print(f"{'KEY':{width[0]}}   {'VALUE':{width[1]}}  {'DEFAULT':{width[2]}}  DESCRIPTION")
    for key, value, default, mark, text in rows:
        print(f"{key:{width[0]}} {mark} {value:{width[1]}}  {default:{width[2]}}  {text}")
    return 0


def _verify(args) -> int:
    from branchrl.verifiers import main_verify

    if args.jobs < 1:
        from .config import ConfigError

        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
    return main_verify(args.file, jobs=args.jobs, strict=args.strict)


def _envs(args) -> int:
    from branchrl.envs.registry import listed

    for name, source in listed().items():
        print(f"{name:12s} {source}")
    return 0


def _verifiers(args) -> int:
    from branchrl.verifiers.registry import listed

    for name, description in listed().items():
        print(f"{name:12s} {description}")
    return 0


def _env_check(args) -> int:
    from branchrl.envs import load_env
    from branchrl.envs.check import check_env

    from .config import ConfigError

    if args.problems < 1 or args.seeds < 1:
        raise ConfigError("--problems and --seeds must be at least 1")
    env = load_env(args.name, **_env_kwargs(args.overrides))
    report = check_env(env, args.problems, tuple(range(args.seeds)))
    print(f"env {env.name}: verifier {env.verifier}, answer marker {env.answer_marker!r}")
    print("drawn: " + ", ".join(f"{split} {n}" for split, n in report.drawn.items()) + f" (seeds 0..{args.seeds - 1})")
    for line in [*report.notes, *report.overlaps, *report.failures]:
        print(line)
    print(f"splits: {'disjoint' if not report.overlaps else 'OVERLAP'}; worked solutions: "
          f"{report.solutions - len(report.failures)} of {report.solutions} pass")
    print("ok" if report.ok else "FAILED")
    return 0 if report.ok else 1


def _env_kwargs(items: list[str]) -> dict:
    """load_environment() arguments from key=value words, values read as YAML (as config overrides are)."""
    import yaml

    from .config import ConfigError

    pairs = [item.partition("=") for item in items]
    if any(not key or not sep for key, sep, _ in pairs):
        raise ConfigError(f"env arguments look like key=value, got {' '.join(items)}")
    try:
        return {key: yaml.safe_load(value) if value else "" for key, _, value in pairs}
    except yaml.YAMLError:
        raise ConfigError(f"env arguments are key=value with YAML values (quote a string): {items}") from None


def _report(args) -> int:
    from branchrl.data.report import write_report

    print(write_report(Path(args.run_dir)))
    return 0


def _plan(args) -> int:
    import json

    from .config import ConfigError
    from .plan.costs import Efficiencies
    from .plan.plan import plan_own, plan_target, table

    if (args.model is None) != (args.gpu is None):
        raise ConfigError("give --model and --gpu together (a target), or neither (the run's own hardware)")
    if args.gpus is not None and args.gpus < 1 or args.model and args.gpus is None:
        raise ConfigError("--gpus N: a whole number of GPUs >= 1 (required with --model)")
    if args.prompts_per_step is not None and (args.prompts_per_step < 1 or not args.model):
        raise ConfigError("--prompts-per-step N: N >= 1, with --model (the run's own plan keeps its prompts)")
    knobs = {k: getattr(args, k) for k in ("decode_efficiency", "prefill_mfu", "train_mfu", "decode_batch", "net_gbps")
             if getattr(args, k) is not None}
    if any(v <= 0 for v in knobs.values()):
        raise ConfigError(f"efficiencies and bandwidths must be > 0: {knobs}")
    if "decode_batch" in knobs:
        knobs["decode_batch"] = int(knobs["decode_batch"])
    if args.model:
        plan = plan_target(args.run_dir, args.model, args.gpu, args.gpus, args.sites, args.wan_gbps,
                           Efficiencies(**knobs), args.prompts_per_step)
    else:
        plan = plan_own(args.run_dir, args.gpus, args.sites, args.wan_gbps)
    print(table(plan))
    if args.out:
        Path(args.out).write_text(json.dumps(plan, indent=2) + "\n")
        print(f"plan written to {args.out}")
    return 0


def _is_user_error(e: Exception) -> bool:
    from .config import ConfigError

    if isinstance(e, (ConfigError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
        return True
    if "branchrl.launch" in sys.modules and isinstance(e, sys.modules["branchrl.launch"].LaunchError):
        return True
    if "branchrl.envs" in sys.modules and isinstance(e, sys.modules["branchrl.envs"].EnvError):
        return True
    if "branchrl.data.datastore" in sys.modules and isinstance(e, sys.modules["branchrl.data.datastore"].DataSetError):
        return True
    return False


if __name__ == "__main__":
    sys.exit(main())
