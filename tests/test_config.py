"""Run config: YAML + dotted overrides, validated once; every mistake is one ConfigError line saying what to change."""

from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from branchrl.config import Config, ConfigError, dump_config, load_config
from branchrl.envs import load_env

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def error_of(path=None, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    message = str(info.value)
    assert "\n" not in message, message
    return message


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


# ------------------------------------------------------------------ loading and round trips
def test_demo_config_loads_with_every_value_from_the_file():
    cfg = load_config(DEMO)
    raw = yaml.safe_load(DEMO.read_text())

    def same(section: BaseModel, values: dict, where: str):
        for key, value in values.items():
            got = getattr(section, key)
            if isinstance(got, BaseModel):
                same(got, value, f"{where}{key}.")
            else:  # YAML 1.1 reads `3e-4` as a string; pydantic makes it the float it means
                value = float(value) if isinstance(got, float) and isinstance(value, str) else value
                assert got == value, f"{where}{key}: file says {value!r}, config holds {got!r}"

    same(cfg, raw, "")
    assert cfg.run.name == "demo" and cfg.env.name == "arithmetic" and cfg.model.path is None


@pytest.mark.parametrize("overrides", [[], ["run.steps=3", "train.lr=1e-4", "model.path=/some/ckpt",
                                            "env.kwargs.digits=3"]])
def test_dump_then_load_round_trips_to_an_equal_config(tmp_path, overrides):
    cfg = load_config(DEMO, overrides)
    dump_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_no_file_means_defaults_and_empty_file_or_section_too(tmp_path):
    assert load_config(None) == Config()
    assert load_config(write(tmp_path, "")) == Config()
    # a section whose lines are all commented out is null in YAML: it keeps its defaults, overrides still apply
    cfg = load_config(write(tmp_path, "rollout:\n#  workers: 3\nrun:\n"), ["rollout.workers=5"])
    assert cfg.rollout.workers == 5 and cfg.run == Config().run


def test_overrides_set_nested_values_with_yaml_types():
    cfg = load_config(DEMO, ["run.steps=3", "train.lr=1e-4", "model.path=null", "env.kwargs.digits=3",
                             "model.tiny.layers=2", "run.ray_address=auto"])
    assert cfg.run.steps == 3 and cfg.train.lr == pytest.approx(1e-4) and cfg.model.path is None
    assert cfg.env.kwargs == {"digits": 3} and cfg.model.tiny.layers == 2 and cfg.run.ray_address == "auto"
    assert cfg.rollout.workers == 2  # untouched keys keep the file's values


def test_numeric_names_stay_names():
    cfg = load_config(None, ["run.name=2024", "model.path=123"])
    assert cfg.run.name == "2024" and cfg.model.path == "123"


def test_every_field_has_a_default_and_a_one_line_description():
    def walk(model: type[BaseModel], prefix: str):
        for name, info in model.model_fields.items():
            assert info.description and "\n" not in info.description, f"{prefix}{name} needs a one-line description"
            assert not info.is_required(), f"{prefix}{name} needs a default"
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                walk(info.annotation, f"{prefix}{name}.")

    walk(Config, "")


# ------------------------------------------------------------------ errors that say what to change
@pytest.mark.parametrize("override, wrong, suggestion", [
    ("rollout.worker=3", "rollout.worker", "rollout.workers"),
    ("model.tiny.hiddensize=64", "model.tiny.hiddensize", "model.tiny.hidden_size"),
    ("trian.lr=0.1", "trian", "train"),
    ("branch.max_leafs=9", "branch.max_leafs", "branch.max_leaves"),
])
def test_unknown_key_names_it_and_suggests_the_nearest(override, wrong, suggestion):
    message = error_of(overrides=[override])
    assert f"unknown config key '{wrong}'" in message and f"did you mean '{suggestion}'" in message


def test_unknown_key_in_the_file_is_caught_too(tmp_path):
    message = error_of(write(tmp_path, "rollout: {workers: 2, temprature: 0.5}\n"))
    assert "'rollout.temprature'" in message and "did you mean 'rollout.temperature'" in message


def test_unknown_key_without_a_near_match_lists_the_valid_ones():
    message = error_of(overrides=["nosuch=1"])
    assert "unknown config key 'nosuch'" in message and "did you mean" not in message
    assert "valid keys here: run, env, model" in message


@pytest.mark.parametrize("override, expected", [
    ("run.steps=abc", "run.steps: Input should be a valid integer"),
    ("run.seed=1.5", "run.seed"),
    ("rollout.workers=0", "rollout.workers: Input should be greater than 0 (got 0)"),
    ("train.lr=-1", "train.lr: Input should be greater than 0"),
    ("train.algo=ppo", "train.algo: Input should be 'sft', 'grpo' or 'tree' (got 'ppo')"),
    ("model.dtype=fp16", "model.dtype"),
    ("run=5", "invalid config value run:"),
    ("env.kwargs=5", "env.kwargs: Input should be a valid dictionary"),
    ("rollout.top_p=0", "rollout.top_p: Input should be greater than 0 (got 0)"),
    ("rollout.top_p=1.5", "rollout.top_p: Input should be less than or equal to 1 (got 1.5)"),
    ("rollout.top_k=-1", "rollout.top_k: Input should be greater than or equal to 0 (got -1)"),
    ("rollout.max_rows=-8", "rollout.max_rows: Input should be greater than or equal to 0 (got -8)"),
    ("rollout.tool_pool=gpu", "rollout.tool_pool: Input should be 'worker' or 'verifiers' (got 'gpu')"),
])
def test_wrong_types_and_impossible_values_name_the_key_and_value(override, expected):
    message = error_of(overrides=[override])
    assert message.startswith("invalid config value ") and expected in message
    if "=abc" in override:
        assert "(got 'abc')" in message


def test_cross_field_rules_read_as_plain_sentences():
    message = error_of(overrides=["branch.roots=4", "branch.max_leaves=2"])
    assert message == "invalid config value branch: max_leaves (2) must be >= roots (4)"
    message = error_of(overrides=["model.tiny.hidden_size=130", "model.tiny.heads=4"])
    assert "model.tiny: hidden_size must be divisible by heads" in message


@pytest.mark.parametrize("overrides, expected", [
    (["train.workers=3", "train.batch_size=2"],
     "invalid config value train: batch_size (2) counts sequences per step over all 3 workers; raise it to at least 3 "
     "so every trainer gets one"),
    (["train.workers=2", "train.batch_size=5", "train.micro_batch_size=4"],
     "invalid config value train: micro_batch_size (4) is over one worker's share of batch_size (5 / 2 workers = 3); "
     "lower it, or 0 for no accumulation"),
    (["train.workers=2", "train.gpus=0.5"],
     "invalid config value train: workers=2 with gpus=0.5: NCCL needs a whole GPU per trainer; set gpus to 1 or "
     "workers to 1"),
    (["train.workers=4", "warm_start.problems=8", "warm_start.batch_size=2"],
     "invalid config: warm_start.batch_size (2) is below train.workers (4); every trainer needs a sequence per "
     "warm-start step"),
])
def test_data_parallel_training_refuses_batches_the_trainers_cannot_share(overrides, expected):
    assert error_of(overrides=overrides) == expected


def test_data_parallel_batch_sizes_that_fit_load():
    cfg = load_config(None, ["train.workers=2", "train.batch_size=5", "train.micro_batch_size=3", "train.gpus=1"])
    assert (cfg.train.workers, cfg.train.micro_batch_size) == (2, 3)


def test_tree_advantages_with_independent_chains_is_refused_by_name():
    message = error_of(overrides=["train.algo=tree", "branch.policy=independent"])
    assert message == ("invalid config: train.algo=tree needs a branching policy (branch.policy=entropy or eptree); "
                       "with branch.policy=independent use train.algo=grpo")


@pytest.mark.parametrize("algo", ["grpo", "tree"])
@pytest.mark.parametrize("truncation", ["rollout.top_p=0.9", "rollout.top_k=20"])
def test_truncated_sampling_is_refused_with_policy_gradient_objectives(algo, truncation):
    """Their loss reads the rollout log-probs as behaviour probabilities against the untruncated policy."""
    message = error_of(overrides=[f"train.algo={algo}", truncation])
    assert message.startswith("invalid config: rollout.top_p=") and f"train.algo={algo}'s loss" in message
    assert message.endswith("use rollout.top_p=1 and rollout.top_k=0, or train.algo=sft")


def test_truncated_sampling_is_fine_with_sft():
    cfg = load_config(None, ["rollout.top_p=0.9", "rollout.top_k=20"])
    assert (cfg.train.algo, cfg.rollout.top_p, cfg.rollout.top_k) == ("sft", 0.9, 20)
    defaults = load_config(None, ["train.algo=grpo"]).rollout
    assert (defaults.top_p, defaults.top_k, defaults.max_rows) == (1.0, 0, 0)


def test_a_row_cap_must_hold_one_trees_leaf_budget():
    message = error_of(overrides=["rollout.max_rows=7"])
    assert message == ("invalid config: rollout.max_rows=7 cannot hold one tree: branch.max_leaves=8 rows may decode "
                       "at once; raise max_rows, or 0 for no cap")
    assert load_config(None, ["rollout.max_rows=8"]).rollout.max_rows == 8


def test_config_accepts_every_registered_policy_and_objective_that_fit_together():
    from branchrl.rollout.policies import POLICIES
    from branchrl.training.algos import ALGOS

    for policy in POLICIES:
        for algo in ALGOS:
            overrides = [f"branch.policy={policy}", f"train.algo={algo}"]
            if ALGOS[algo].needs_branching and not POLICIES[policy].branches:
                assert "needs a branching policy" in error_of(overrides=overrides)
                continue
            cfg = load_config(None, overrides)
            assert (cfg.branch.policy, cfg.train.algo) == (policy, algo)


@pytest.mark.parametrize("override, expected", [
    ("bad", "override 'bad' must look like section.key=value"),
    ("=3", "must look like section.key=value"),
    ("run.name=[1", "override 'run.name=[1': the value is not valid YAML"),
    ("run.steps.deep=1", "invalid config value run.steps"),
])
def test_malformed_overrides(override, expected):
    assert expected in error_of(overrides=[override])


def test_override_into_a_scalar_is_not_a_section(tmp_path):
    message = error_of(write(tmp_path, "run: {steps: 3}\n"), ["run.steps.deep.er=1"])
    assert "'steps' is not a section" in message


def test_missing_file_and_directory(tmp_path):
    assert error_of(tmp_path / "nope.yaml") == f"config file not found: {tmp_path / 'nope.yaml'}"
    assert "is not a file" in error_of(tmp_path)


def test_invalid_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "run:\n  steps: 3\n  name: [unclosed\n")
    message = error_of(path)
    assert message.startswith(f"{path}: not valid YAML (line ")


def test_top_level_must_be_a_mapping(tmp_path):
    assert "top level must be a mapping of sections, got list" in error_of(write(tmp_path, "- 1\n- 2\n"))


def test_binary_file_is_a_config_error(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_bytes(b"\xff\xfe\x00run")
    assert f"cannot read config {path}" in error_of(path)


def test_answer_start_ids_are_the_markers_first_token_never_a_bare_space():
    from branchrl.loop import answer_start_ids  # imports ray and torch; starts nothing
    from branchrl.models import load_tokenizer

    cfg, env = load_config(None), load_env("arithmetic")
    tokenizer = load_tokenizer(cfg.model)   # character-level: " ####" is " ", "#", "#", "#", "#"
    assert answer_start_ids(cfg, env, tokenizer) == {tokenizer.encode("#", add_special_tokens=False)[0]}
    assert answer_start_ids(load_config(None, ["branch.fork_in_answer=true"]), env, tokenizer) == frozenset()


@pytest.mark.parametrize("settings, says", [
    ("{math: {workerz: 2}}", "verify.settings.math: got an unexpected keyword argument 'workerz'"),
    ("{nope: {}}", "unknown verifier 'nope'"),
    ("{python_tests: {workers: 2}}", "verifier 'python_tests' takes no settings"),
])
def test_verify_settings_name_a_verifier_and_its_parameters(settings, says):
    assert says in error_of(overrides=[f"verify.settings={settings}"])
    assert load_config(None, ["verify.settings={math: {workers: 2}}"]).verify.settings == {"math": {"workers": 2}}
