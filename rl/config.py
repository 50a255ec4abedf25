"""Typed run configuration: YAML file + dotted `key=value` overrides, validated once at load.

Every field has a default and a one-line description; `load_config` turns every problem (missing
file, unknown key, wrong type, impossible value) into one `ConfigError` line that says what to change.
This module deliberately imports neither torch nor ray, so `branchrl --help` and config errors are
instant.
"""

from __future__ import annotations

import difflib
import inspect
from pathlib import Path
from typing import Annotated, Any, Literal, get_origin

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from branchrl.rollout.policies import POLICIES  # both registries are plain Python: no torch, no ray
from branchrl.training.algos import ALGOS


class ConfigError(ValueError):
    """A config problem the user must fix; its message is one line."""


def registered(names: dict) -> AfterValidator:
    """A name that must be a key of `names`, the extension point's one dict (e.g. ALGOS)."""
    def check(value: str) -> str:
        if value not in names:
            *rest, last = (f"'{n}'" for n in names)
            raise ValueError(f"Input should be {', '.join(rest)} or {last}" if rest else f"Input should be {last}")
        return value
    return AfterValidator(check)


class Section(BaseModel):
    # coerce_numbers_to_str: YAML reads `name: 2024` (or `run.name=2024`) as a number; a name is still a name
    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True)


class EnvConfig(Section):
    name: str = Field("arithmetic", description="registered env name, entry point, or dotted path 'pkg.module[:fn]'")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for load_environment()")


class TinyModelConfig(Section):
    arch: Literal["llama", "qwen2", "qwen3"] = Field(
        "llama",
        description="architecture of the model built from a config")
    hidden_size: int = Field(128, gt=0, description="model width")
    layers: int = Field(4, gt=0, description="number of decoder layers")
    heads: int = Field(4, gt=0, description="attention heads")
    kv_heads: int = Field(4, gt=0, description="key/value heads (GQA when < heads)")
    intermediate_size: int = Field(384, gt=0, description="MLP width")
    max_position: int = Field(256, gt=0, description="longest sequence (prompt + completion) in tokens")

    @model_validator(mode="after")
    def _heads_divide(self) -> "TinyModelConfig":
        if self.hidden_size % self.heads or self.heads % self.kv_heads:
            raise ValueError("hidden_size must be divisible by heads, and heads by kv_heads")
        return self


class ModelConfig(Section):
    path: str | None = Field(None, description="HF checkpoint dir or hub id; null builds a tiny model from `tiny`")
    tiny: TinyModelConfig = Field(
        default_factory=TinyModelConfig,
        description="shape of the tiny model built when path is null")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="compute dtype of the trainers' forward/backward (their weights and optimizer state "
                               "stay float32), of the rollout engines and of exported checkpoints")

    chat_template: Literal["auto", "none"] = Field(
        "auto", description="auto: when the tokenizer has a chat template, the env's prompt is the user message (after "
                            "system_prompt, if any) and the assistant's turn is opened; none: the raw prompt text")
    system_prompt: str | None = Field(None, description="system message before each prompt (needs a chat template)")

    @model_validator(mode="after")
    def _trainable(self) -> "ModelConfig":
        if self.dtype == "float16":
            raise ValueError("model.dtype=float16 would train without loss scaling, which the trainer does not do; "
                             "use bfloat16 (the same memory) or float32")
        if self.system_prompt is not None and self.chat_template == "none":
            raise ValueError("model.system_prompt needs model.chat_template=auto (a system message lives in the "
                             "chat template)")
        return self


class WarmStartConfig(Section):
    problems: int = Field(0, ge=0, description="worked problems for a short SFT before RL (0 = no warm start)")
    epochs: int = Field(10, gt=0, description="passes over the warm-start problems")
    lr: float = Field(3e-3, gt=0, description="warm-start learning rate")
    batch_size: int = Field(32, gt=0, description="warm-start batch size")


class RolloutConfig(Section):
    workers: int = Field(2, gt=0, description="rollout-worker actors in the inference group")
    cpus_per_worker: float = Field(1.0, gt=0, description="Ray CPUs reserved per rollout worker")
    gpus_per_worker: float = Field(0.0, ge=0, description="Ray GPUs reserved per rollout worker")
    threads_per_worker: int = Field(1, gt=0, description="torch CPU threads in each rollout worker")
    decode: Literal["eager", "compile", "graph"] = Field(
        "eager",
        description="how the engine runs decode steps: eager; compile = torch.compile per batch bucket, attention "
                    "reading KV pages in place; graph = that, captured as a CUDA graph per bucket (compile on CPU)")
    node_resource: str | None = Field(
        None, min_length=1,
        description="custom Ray resource marking inference nodes (e.g. inference_node): rollout workers run only on "
                    "nodes that have it; null = any node")
    prompts_per_step: int = Field(64, gt=0, description="problems sampled per RL step")
    max_new_tokens: int = Field(64, gt=0, description="completion length limit in tokens")
    temperature: float = Field(1.0, gt=0, description="sampling temperature for training rollouts")
    top_p: float = Field(1.0, gt=0, le=1, description="training rollouts draw from the most likely tokens up to this "
                                                      "mass (1 = all); below 1 only with train.algo=sft")
    top_k: int = Field(0, ge=0, description="training rollouts draw from the k most likely tokens (0 = all); "
                                            "above 0 only with train.algo=sft")
    max_rows: int = Field(
        0, ge=0,
        description="most sequences a worker decodes at once (0 = no cap); more prompts wait and join as rows finish; "
                    "each tree's whole leaf budget is reserved when it joins, so forks are never skipped; 0 or >= "
                    "branch.max_leaves")
    tokens_per_step: int = Field(
        0, ge=0,
        description="sample more batches of prompts_per_step problems until this many tokens were generated (0 = one "
                    "batch); equal budgets across policies")
    max_staleness: int = Field(
        0, ge=0,
        description="0 = synchronous: each step's rollouts start after the last update's weights (on-policy); k >= 1 = "
                    "async: the workers keep k batches in flight while the trainer trains, and a batch more than k "
                    "policy versions behind the update it would feed is dropped and counted")
    tool_workers: int = Field(4, gt=0, description="envs with tools: tool calls run at once, each in its own warm "
                                                   "sandbox, while the other rows decode: per rollout worker "
                                                   "(tool_pool=worker) or per verifier actor (tool_pool=verifiers)")
    tool_pool: Literal["worker", "verifiers"] = Field(
        "worker",
        description="envs with tools: where the sandboxed calls run. worker = a thread pool in each rollout worker's "
                    "own process (no Ray round trip per call); verifiers = on the verifier actors (verify.*), the "
                    "calls a worker's rows make in one decode step sent as one Ray call per actor, least-loaded "
                    "first: keeps sandbox CPU work off the inference nodes of a split cluster. A call whose actor "
                    "dies or does not answer is an `unavailable` output (tool_unavailable), never a failed rollout")
    tool_wait_steps: int = Field(
        0, ge=0,
        description="when a row that called a tool resumes: 0 = at the first decode step after the call finished "
                    "(fastest; the step depends on timing, so tool rollouts are not bit-reproducible); N = exactly N "
                    "decode steps after the call, waiting for it then if needed (the same rollouts for a seed)")
    problem_order: Literal["draw", "epochs"] = Field(
        "draw", description="which train problems each batch holds: draw = an independent seeded draw per batch (any "
                            "env); epochs = a fresh permutation of the whole train split per epoch, no problem twice "
                            "in an epoch (an env that knows its split's size: a data-set env)")
    max_batches_per_step: int = Field(4, gt=0, description="most batches sampled in one step (token budget and "
                                                           "grpo/tree dynamic sampling refill)")
    weight_sync: Literal["auto", "object_store", "collective"] = Field(
        "object_store",
        description="how new weights reach the rollout workers: object_store = trainer rank 0 puts one copy in the Ray "
                    "object store and every worker fetches it; collective = a torch.distributed broadcast from trainer "
                    "rank 0 to every worker (nccl when train.gpus and rollout.gpus_per_worker are both >= 1, gloo "
                    "otherwise; a sync whose broadcast fails falls back to the object store); auto = collective over "
                    "nccl when both sides have whole GPUs, else object_store (the nccl path is not yet run on GPUs: "
                    "opt in)")
    weight_sync_timeout_s: float = Field(300.0, gt=0, description="collective weight sync: longest wait for the "
                                                                  "group to form and for each broadcast; past it "
                                                                  "that sync falls back to the object store")


class BranchConfig(Section):
    policy: Annotated[str, registered(POLICIES)] = Field(
        "entropy", description="where trees fork: independent = N chains, entropy = online at uncertain tokens, "
                               "eptree = top-N uncertain positions of finished chains, tool_entropy = right after a "
                               "tool's output where entropy rose above its level before the call (ARPO)")
    roots: int = Field(4, gt=0, description="root chains per problem (N samples for `independent`)")
    max_leaves: int = Field(8, gt=0, description="leaf budget per tree (roots + forks)")
    entropy_threshold: float = Field(
        0.8, ge=0,
        description="entropy: fork where next-token entropy (nats) is at least this")
    min_prefix: int = Field(2, ge=0, description="no forks in the first N completion tokens")
    min_gap: int = Field(
        4, ge=1,
        description="minimum tokens between two forks on one path, and before the length limit")
    max_depth: int = Field(3, gt=0, description="entropy: most forks along one path")
    top_n: int = Field(2, gt=0, description="eptree: fork points per tree per round")
    forks_per_point: int = Field(2, gt=0, description="eptree: new branches at each fork point")
    rounds: int = Field(1, gt=0, description="eptree: rounds of forking")
    fork_in_answer: bool = Field(False, description="also fork after the env's answer marker (e.g. '####'), "
                                                    "where a fork can only change the answer")
    tool_window: int = Field(4, gt=0, description="tool_entropy: fork only within this many tokens after a tool's "
                                                  "output")
    tool_entropy_rise: float = Field(
        0.0, description="tool_entropy: fork where a token's entropy exceeds the mean entropy of the last tokens "
                         "before the tool call by more than this (nats)")

    @model_validator(mode="after")
    def _budget(self) -> "BranchConfig":
        if self.max_leaves < self.roots:
            raise ValueError(f"max_leaves ({self.max_leaves}) must be >= roots ({self.roots})")
        return self


class VerifyConfig(Section):
    workers: int = Field(1, gt=0, description="verifier actors")
    cpus_per_worker: float = Field(0.5, gt=0, description="Ray CPUs reserved per verifier actor")
    timeout_s: float = Field(5.0, gt=0, description="per-sample verification deadline")
    node_resource: str | None = Field(
        None, min_length=1,
        description="custom Ray resource marking the nodes verifiers run on; null = any node")
    settings: dict[str, dict] = Field(
        default_factory=dict,
        description="per-verifier settings applied in every verifier actor, e.g. {math: {workers: 2}} (math-verify "
                    "processes per actor; default one per CPU, at most 4)")

    @model_validator(mode="after")
    def _settings_fit(self):
        from branchrl.verifiers.registry import UnknownVerifier, get_verifier  # light: no torch, no Ray
        for name, kwargs in self.settings.items():
            try:
                configure = get_verifier(name).configure
            except UnknownVerifier as e:
                raise ValueError(str(e)) from None
            if configure is None:
                raise ValueError(f"verifier {name!r} takes no settings")
            try:
                inspect.signature(configure).bind_partial(**kwargs)
            except TypeError as e:
                raise ValueError(f"verify.settings.{name}: {e}") from None
        return self


class TrainConfig(Section):
    algo: Annotated[str, registered(ALGOS)] = Field(
        "sft", description="objective: sft = fine-tune on distinct verified paths, grpo = policy gradient with group "
                           "advantages on leaves, tree = policy gradient with TreeRL span advantages")
    workers: int = Field(1, gt=0, description="trainer actors forming one torch.distributed job over which the "
                                              "model is sharded or replicated (train.sharding; gloo on CPU, nccl on "
                                              "GPUs)")
    cpus: float = Field(1.0, gt=0, description="Ray CPUs reserved per trainer actor")
    gpus: float = Field(0.0, ge=0, description="Ray GPUs reserved per trainer actor")
    threads: int = Field(2, gt=0, description="torch CPU threads in each trainer actor")
    node_resource: str | None = Field(
        None, min_length=1,
        description="custom Ray resource marking training nodes (e.g. training_node): trainers run only on nodes that "
                    "have it; null = any node")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    batch_size: int = Field(32, gt=0, description="sequences per optimizer step, over all trainers")
    micro_batch_size: int = Field(0, ge=0, description="sequences per forward/backward in each trainer; more are "
                                                       "accumulated (0 = a trainer's whole share at once)")
    epochs: int = Field(1, gt=0, description="passes over each step's verified samples (`train --from-data`: "
                                             "over the whole stored data set)")
    max_per_problem: int = Field(4, gt=0, description="distinct verified completions kept per problem")
    grad_clip: float = Field(1.0, gt=0, description="gradient-norm clip")
    clip_low: float = Field(0.2, ge=0, lt=1, description="grpo/tree: ratio clip below 1 (1 - clip_low)")
    clip_high: float = Field(0.28, ge=0, description="grpo/tree: ratio clip above 1 (clip-higher, DAPO)")
    kl_coef: float = Field(
        0.0, ge=0,
        description="grpo/tree: weight of the k3 KL to the policy at the first update (0 = off)")
    shared_spans: Literal["once", "per_leaf"] = Field(
        "once", description="grpo/tree: a span shared by L leaves counts once (weight 1/L per leaf) or once per leaf")
    old_logprobs: Literal["rollout", "recompute"] = Field(
        "recompute", description="grpo/tree: the PPO ratio's old policy: recompute = the trainer's own log-probs "
                                 "before the update (one forward-only pass, counted as training FLOPs), with the "
                                 "rollout engine's entering through truncated importance weights; rollout = the "
                                 "engine's log-probs as sampled (no extra pass; exact only where engine and trainer "
                                 "agree, e.g. float32)")
    tis_cap: float = Field(2.0, ge=0, description="grpo/tree with old_logprobs=recompute: cap on each token's "
                                                  "importance weight pi_trainer / pi_rollout (0 = no weights)")
    sharding: Literal["fsdp", "ddp"] = Field(
        "fsdp", description="how the trainers hold the model: fsdp = parameters, gradients and optimizer state split "
                            "over train.workers (FSDP2, one unit per decoder block); ddp = every trainer holds all "
                            "of it")
    activation_checkpointing: bool = Field(
        False, description="recompute each decoder block's activations in backward instead of keeping them (much "
                           "less activation memory for about a third more training compute)")

    @model_validator(mode="after")
    def _data_parallel(self) -> "TrainConfig":
        share = -(-self.batch_size // self.workers)  # the most sequences one trainer gets per step
        if self.batch_size < self.workers:
            raise ValueError(f"batch_size ({self.batch_size}) counts sequences per step over all {self.workers} "
                             f"workers; raise it to at least {self.workers} so every trainer gets one")
        if self.micro_batch_size > share:
            raise ValueError(f"micro_batch_size ({self.micro_batch_size}) is over one worker's share of batch_size "
                             f"({self.batch_size} / {self.workers} workers = {share}); lower it, or 0 for no "
                             "accumulation")
        if self.workers > 1 and 0 < self.gpus < 1:
            raise ValueError(f"workers={self.workers} with gpus={self.gpus}: NCCL needs a whole GPU per trainer; "
                             f"set gpus to 1 or workers to 1")
        return self


class EvalConfig(Section):
    problems: int = Field(500, gt=0, description="held-out problems for pass@1 (greedy) before and after")
    every: int = Field(0, ge=0, description="also evaluate every N steps (0 = only before and after)")


class TrackConfig(Section):
    tensorboard: bool = Field(True, description="TensorBoard event files of every per-step scalar in RUN/tensorboard/")
    wandb: bool = Field(False, description="also log every per-step scalar to Weights & Biases (pip install wandb)")
    wandb_project: str = Field("branchrl", description="the W&B project the run is logged to")
    wandb_mode: Literal["online", "offline"] | None = Field(
        None, description="W&B mode: offline writes RUN/wandb/ for a later `wandb sync`; null = wandb's own default "
                          "(WANDB_MODE, else online)")
    samples: int = Field(4, ge=0, description="passing and failing rollouts (each, plus up to as many verifier errors) "
                                              "written per step to RUN/samples/step-NNNNNN.jsonl")
    warn_after: int = Field(3, gt=0, description="warn on the console when no rollout has passed for this many steps "
                                                 "in a row")


class GenerateConfig(Section):
    split: Literal["train", "warm_start", "eval"] = Field(
        "train", description="`branchrl generate`: the env split whose problems it walks")
    problems: int = Field(
        0, ge=0, description="`branchrl generate`: problems of the split to walk, each once, drawn with run.seed (0 = "
                             "the whole split, for an env that knows its size: a data-set env, not a procedural one)")
    per_problem: int = Field(4, gt=0, description="`branchrl generate`: a problem is done once it has this many "
                                                  "distinct verified samples")
    max_leaves_per_problem: int = Field(
        32, gt=0, description="`branchrl generate`: a problem is also done once this many leaves were sampled "
                              "for it (one new tree per batch until then); at least branch.max_leaves")
    batches_in_flight: int = Field(
        2, gt=0, description="`branchrl generate`: batches of rollout.prompts_per_step problems on the rollout workers "
                             "at once (2: they sample the next while the driver verifies and stores one)")


class RunConfig(Section):
    name: str = Field("run", description="run name, used for the default output dir")
    seed: int = Field(0, description="seed for data sampling, model init and sampling")
    steps: int = Field(10, gt=0, description="RL steps (sample -> verify -> update -> sync)")
    checkpoint_every: int = Field(
        0, ge=0,
        description="write a step checkpoint every N steps, which `branchrl run --resume RUN_DIR` continues from (0 = "
                    "only at a stop signal and the final one)")
    ray_address: str | None = Field(None, description="null = embedded local Ray; 'auto' joins a running cluster")
    verbose: bool = Field(False, description="show Ray's start-up warnings and the actors' weight-loading progress "
                                             "bars (`--verbose`)")


class Config(Section):
    run: RunConfig = Field(default_factory=RunConfig, description="run-wide settings")
    env: EnvConfig = Field(default_factory=EnvConfig, description="task environment")
    model: ModelConfig = Field(default_factory=ModelConfig, description="policy model")
    warm_start: WarmStartConfig = Field(default_factory=WarmStartConfig, description="SFT before RL")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="inference group")
    branch: BranchConfig = Field(default_factory=BranchConfig, description="branching sampler")
    verify: VerifyConfig = Field(default_factory=VerifyConfig, description="verifier pool")
    train: TrainConfig = Field(default_factory=TrainConfig, description="training group")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="held-out evaluation")
    track: TrackConfig = Field(default_factory=TrackConfig, description="experiment tracking and run-time warnings")
    generate: GenerateConfig = Field(default_factory=GenerateConfig,
                                     description="`branchrl generate`: a verified data set from a fixed policy")

    @model_validator(mode="after")
    def _combination(self) -> "Config":
        problems = ALGOS[self.train.algo].problems(self)
        if problems:
            raise ValueError(problems[0])
        if self.warm_start.problems and self.warm_start.batch_size < self.train.workers:
            raise ValueError(f"warm_start.batch_size ({self.warm_start.batch_size}) is below train.workers "
                             f"({self.train.workers}); every trainer needs a sequence per warm-start step")
        r = self.rollout
        if 0 < r.max_rows < self.branch.max_leaves:
            raise ValueError(f"rollout.max_rows={r.max_rows} cannot hold one tree: branch.max_leaves="
                             f"{self.branch.max_leaves} rows may decode at once; raise max_rows, or 0 for no cap")
        if self.generate.max_leaves_per_problem < self.branch.max_leaves:
            raise ValueError(f"generate.max_leaves_per_problem={self.generate.max_leaves_per_problem} is below one "
                             f"tree's leaf budget (branch.max_leaves={self.branch.max_leaves}); raise it or lower "
                             f"branch.max_leaves")
        return self


# what `branchrl generate --resume` may change: how long the walk goes on and how its workers are placed, nothing
# that changes which problems it walks or what counts as a sample
GENERATE_RESUME_KEYS = ("run.steps", "run.ray_address", "rollout.workers", "rollout.cpus_per_worker",
                        "rollout.gpus_per_worker", "rollout.threads_per_worker", "rollout.node_resource",
                        "rollout.tool_pool", "verify.workers", "verify.cpus_per_worker", "verify.node_resource")


def check_generate_resume(overrides: list[str]) -> None:
    """A generate resume's overrides may only be GENERATE_RESUME_KEYS; anything else is a one-line error."""
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or key not in GENERATE_RESUME_KEYS:
            raise ConfigError(f"generate --resume continues with the output dir's own config.yaml; an override may "
                              f"only be one of {', '.join(GENERATE_RESUME_KEYS)}, not {item!r}")


def weight_sync_backend(cfg: Config) -> str | None:
    """The broadcast group's torch.distributed backend for rollout.weight_sync, or None for the object store.
    NCCL needs a whole GPU per member (two ranks on one device is an NCCL error), so fractions count as none."""
    gpus = cfg.train.gpus >= 1 and cfg.rollout.gpus_per_worker >= 1
    backend = "nccl" if gpus else "gloo"
    return {"object_store": None, "collective": backend, "auto": "nccl" if gpus else None}[cfg.rollout.weight_sync]


def describe(cfg: BaseModel, prefix: str = "") -> list[tuple[str, Any, Any, str]]:
    """Every leaf key of a config as (dotted key, value, default, description), in declaration order."""
    rows = []
    for name, info in type(cfg).model_fields.items():
        value = getattr(cfg, name)
        if _section_type(info.annotation) is not None:
            rows += describe(value, f"{prefix}{name}.")
        else:
            default = info.default_factory() if info.default_factory else info.default
            rows.append((f"{prefix}{name}", value, default, info.description or ""))
    return rows


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read YAML (or start from defaults when path is None), apply `a.b=value` overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_yaml(Path(path))
    file_env = dict(data.get("env") or {}) if isinstance(data.get("env"), dict) else {}
    for item in overrides:
        _apply_override(data, item)
    _env_kwargs_left_behind(file_env, data.get("env"), overrides)
    _check_keys(data, Config)
    _empty_sections(data, Config)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e)) from None


def dump_config(cfg: Config, path: str | Path) -> None:
    """Write the fully resolved config; `load_config` of the file gives an equal Config."""
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if not path.is_file():
        raise ConfigError(f"config {path} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config {path}: {type(e).__name__}: {_one_line(e)}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" (line {where.line + 1})" if where else ""
        raise ConfigError(f"{path}: not valid YAML{line}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _apply_override(data: dict[str, Any], item: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        if node.get(part) is None:  # absent, or an empty YAML section
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        raise ConfigError(f"override {item!r}: the value is not valid YAML (quote it to pass a string)") from None


def _env_kwargs_left_behind(file_env: dict, env: Any, overrides: list[str]) -> None:
    """`env.name=X` on the command line over a file whose env.kwargs were written for another env: those
    kwargs would go to X (often accepted, with another meaning). The user drops them or names them."""
    keys = [item.partition("=")[0] for item in overrides]
    kwargs = file_env.get("kwargs")
    if "env.name" not in keys or not kwargs or any(k == "env.kwargs" or k.startswith("env.kwargs.") for k in keys):
        return
    before, after = file_env.get("name", EnvConfig.model_fields["name"].default), (env or {}).get("name")
    if after != before:
        shown = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        raise ConfigError(f"env.name={after} replaces the config's env {before!r}, whose env.kwargs ({shown}) would "
                          f"go to {after}; drop them with env.kwargs={{}} or name {after}'s own "
                          f"(env.kwargs.KEY=VALUE)")


def _check_keys(data: Any, model: type[BaseModel], prefix: str = "") -> None:
    """Unknown keys get a 'did you mean' from the valid names at that level."""
    if not isinstance(data, dict):
        return
    fields = model.model_fields
    for key, value in data.items():
        if key not in fields:
            near = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean '{prefix}{near[0]}'?" if near else f"; valid keys here: {', '.join(fields)}"
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint}")
        sub = _section_type(fields[key].annotation)
        if sub is not None:
            _check_keys(value, sub, f"{prefix}{key}.")


def _section_type(annotation: Any) -> type[BaseModel] | None:
    # get_origin first: on Python 3.10 `dict[str, Any]` passes isinstance(.., type) but breaks issubclass
    if get_origin(annotation) is None and isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _empty_sections(data: dict[str, Any], model: type[BaseModel]) -> None:
    """A section left empty in YAML (`rollout:` with every line commented out) reads as None: use its defaults."""
    for key, info in model.model_fields.items():
        sub = _section_type(info.annotation)
        if sub is None or key not in data:
            continue
        if data[key] is None:
            data[key] = {}
        elif isinstance(data[key], dict):
            _empty_sections(data[key], sub)


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    msg = first["msg"].removeprefix("Value error, ")  # our own validators' messages stand alone
    if not first["loc"]:  # a rule across sections: its message names the keys
        return _one_line(f"invalid config: {msg}")
    where = ".".join(str(p) for p in first["loc"])
    got = first.get("input")
    got_text = "" if isinstance(got, dict) else f" (got {got!r})"
    return _one_line(f"invalid config value {where}: {msg}{got_text}")


def _one_line(text: object) -> str:
    return " ".join(str(text).split())
