"""`branchrl` CLI: user errors are one `branchrl: error:` line and exit code 2, before torch or Ray load."""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from branchrl.config import ConfigError, load_config
from branchrl.envs import EnvError

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
BRANCHRL = shutil.which("branchrl", path=str(Path(sys.executable).parent)) or shutil.which("branchrl")


def branchrl(*args, cwd, stdin=None):
    return subprocess.run([BRANCHRL, *map(str, args)], cwd=cwd, input=stdin, capture_output=True, text=True,
                          timeout=60)


def one_error_line(proc) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("branchrl: error: "), proc.stderr
    assert proc.stdout == ""
    return lines[0]


@pytest.fixture
def full_dir(tmp_path):
    out = tmp_path / "full"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    return out


def error_cases(tmp_path: Path, full_dir: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (argv, text the error line must hold)."""
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("run:\n  steps: [3\n")
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    no_samples = tmp_path / "no_samples"
    (no_samples / "data").mkdir(parents=True, exist_ok=True)
    return {
        "missing config": (["run", tmp_path / "nope.yaml"], f"config file not found: {tmp_path / 'nope.yaml'}"),
        "unknown key": (["run", DEMO, "rollout.worker=3"],
                        "unknown config key 'rollout.worker'; did you mean 'rollout.workers'?"),
        "wrong type": (["run", DEMO, "run.steps=abc"],
                       "invalid config value run.steps: Input should be a valid integer"),
        "zero workers": (["run", DEMO, "rollout.workers=0"], "rollout.workers: Input should be greater than 0 (got 0)"),
        "leaves < roots": (["run", DEMO, "branch.roots=4", "branch.max_leaves=2"],
                           "branch: max_leaves (2) must be >= roots (4)"),
        "invalid yaml": (["run", bad_yaml], f"{bad_yaml}: not valid YAML (line 3)"),
        "out not empty": (["run", DEMO, "--out", full_dir], f"output dir {full_dir} is not empty; pass another --out"),
        "out is a file": (["run", DEMO, "--out", a_file], f"output dir {a_file} is a file"),
        "unknown env": (["run", DEMO, "env.name=arithmatic", "env.kwargs={}"], "unknown env 'arithmatic'"),
        "bad env kwargs": (["run", DEMO, "env.kwargs.digits=0"],
                           "env 'arithmetic': digits must be an integer in 1..12"),
        "override after --out": (["run", DEMO, "--out", tmp_path / "new", "run.steps=abc"], "run.steps"),
        "verify missing file": (["verify", tmp_path / "none.jsonl"], "No such file or directory"),
        "tree without branching": (["run", DEMO, "train.algo=tree", "branch.policy=independent"],
                                   "train.algo=tree needs a branching policy"),
        "unknown policy": (["run", DEMO, "branch.policy=beam"],
                           "branch.policy: Input should be 'independent', 'entropy', 'eptree' or 'tool_entropy' "
                           "(got 'beam')"),
        "train missing data": (["train", DEMO, "--from-data", tmp_path / "nope"],
                               f"data dir {tmp_path / 'nope'} not found; pass a run directory or its data/ directory"),
        "train empty data": (["train", DEMO, "--from-data", no_samples],
                             f"{no_samples / 'data'} holds no parquet shards (no verified samples)"),
        "train data is a file": (["train", DEMO, "--from-data", a_file], f"data dir {a_file} is not a directory"),
        "train override": (["train", DEMO, "--from-data", no_samples, "train.epoch=2"],
                           "unknown config key 'train.epoch'; did you mean 'train.epochs'?"),
        "resume changes the math": (["run", "--resume", full_dir, "train.workers=1", "train.lr=0.1"],
                                    "an override may only reshape the training group (train.workers, train.cpus, "
                                    "train.gpus, train.threads, train.node_resource, train.sharding, "
                                    "train.micro_batch_size, train.activation_checkpointing), not 'train.lr'"),
        "resume with a config": (["run", "--resume", full_dir, DEMO], "--resume RUN_DIR takes no config or --out"),
        "float16": (["run", DEMO, "model.dtype=float16"], "model.dtype=float16 would train without loss scaling"),
    }


@pytest.mark.parametrize("case", ["missing config", "unknown key", "wrong type", "zero workers", "leaves < roots",
                                  "invalid yaml", "out not empty", "out is a file", "unknown env", "bad env kwargs",
                                  "override after --out", "verify missing file", "tree without branching",
                                  "unknown policy", "train missing data", "train empty data", "train data is a file",
                                  "train override", "resume changes the math", "resume with a config", "float16"])
def test_user_errors_are_one_line_and_exit_2(case, tmp_path, full_dir):
    argv, expected = error_cases(tmp_path, full_dir)[case]
    line = one_error_line(branchrl(*argv, cwd=tmp_path))
    assert expected in line
    assert (full_dir / "old.txt").read_text() == "keep me" and sorted(p.name for p in full_dir.iterdir()) == ["old.txt"]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "new").exists()


def test_errors_and_help_never_import_torch_or_ray(tmp_path, full_dir):
    """In one process: both helps exit 0, every user error returns 2, and torch / ray / transformers stay unloaded."""
    cases = [[str(a) for a in argv] for argv, _ in error_cases(tmp_path, full_dir).values()]
    script = textwrap.dedent("""
        import json, sys
        from branchrl.cli import main
        codes = []
        for argv in (["--help"], ["run", "--help"], ["verify", "--help"], ["train", "--help"]):
            try:
                main(argv)
            except SystemExit as e:
                codes.append(e.code)
        codes += [main(argv) for argv in json.loads(sys.argv[1])]
        print(json.dumps({"codes": codes, "loaded": [m for m in ("torch", "ray", "transformers") if m in sys.modules]}))
    """)
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(cases)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report == {"codes": [0, 0, 0, 0] + [2] * len(cases), "loaded": []}
    assert all(f"usage: branchrl {c}" in proc.stdout for c in ("[-h] COMMAND", "run [-h] [--out OUT]", "verify [-h]",
                                                               "train [-h] --from-data DIR"))


def test_console_script_help_exits_0(tmp_path):
    for argv in (["--help"], ["run", "--help"]):
        proc = branchrl(*argv, cwd=tmp_path)
        assert proc.returncode == 0 and proc.stdout.startswith("usage: branchrl") and proc.stderr == ""
    assert "--address" in proc.stdout and "KEY=VALUE" in proc.stdout


def test_usage_mistakes_exit_2(tmp_path):
    for argv in ([], ["nope"], ["run"], ["run", DEMO, "--nope"], ["verify", "a.jsonl", "x=1"], ["train", DEMO],
                 ["train", DEMO, "--from-data", "x", "--epochs", "2"]):
        proc = branchrl(*argv, cwd=tmp_path)
        assert proc.returncode == 2 and "error:" in proc.stderr and "Traceback" not in proc.stderr


def test_verify_file_and_stdin(tmp_path):
    record = {"verifier": "math", "completion": "7+6=13 #### 13", "answer": "13", "id": 1}
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(record) + "\n" + json.dumps({**record, "answer": "14"}) + "\n")
    proc = branchrl("verify", path, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["id"], r["verdict"], r["score"]) for r in rows] == [(1, "pass", 1.0), (1, "fail", 0.0)]
    proc = branchrl("verify", "-", cwd=tmp_path, stdin=json.dumps(record) + "\n")
    assert json.loads(proc.stdout)["verdict"] == "pass"


def test_address_flag_lands_in_the_saved_config(tmp_path):
    from branchrl.cli import _parser, resolve_run

    args = _parser().parse_args(["run", str(DEMO), "run.steps=2", "--address", "auto", "--out", str(tmp_path / "r")])
    cfg, out = resolve_run(args)
    assert (cfg.run.ray_address, cfg.run.steps, out) == ("auto", 2, tmp_path / "r")
    cfg, out = resolve_run(_parser().parse_args(["run", str(DEMO), "run.name=x"]))
    assert cfg.run.ray_address is None and out.parent == Path("runs") and out.name.startswith("x-")


# ------------------------------------------------------------------ loop.prepare: the checks before Ray
@pytest.fixture(scope="module")
def prepare():
    from branchrl.loop import prepare  # imports ray and torch; starts nothing

    return prepare


def small(*overrides):
    return load_config(DEMO, ["eval.problems=20", "warm_start.problems=10", *overrides])


def test_prepare_rejects_bad_input_without_starting_ray(prepare, tmp_path, full_dir, monkeypatch):
    import ray

    def no_ray(*args, **kwargs):
        raise AssertionError("prepare started Ray")

    monkeypatch.setattr(ray, "init", no_ray)  # holds whatever other tests of this session started already
    with pytest.raises(ConfigError, match="is not empty; pass another --out"):
        prepare(small(), full_dir)
    with pytest.raises(EnvError, match="unknown env 'arithmatic'"):
        prepare(small("env.name=arithmatic", "env.kwargs={}"), tmp_path / "a")
    with pytest.raises(EnvError, match="only .* distinct eval problems"):
        prepare(small("env.kwargs.digits=1", "eval.problems=500"), tmp_path / "b")
    with pytest.raises(ConfigError, match="exceeds model.tiny.max_position=32"):
        prepare(small("model.tiny.max_position=32", "rollout.max_new_tokens=30"), tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]
    assert [p.name for p in full_dir.iterdir()] == ["old.txt"]


def test_prepare_saves_the_resolved_config(prepare, tmp_path):
    cfg = small("run.seed=3")
    env, tokenizer, eval_set, warm_set = prepare(cfg, tmp_path / "run")
    assert load_config(tmp_path / "run" / "config.yaml") == cfg
    assert len(eval_set) == 20 and len(warm_set) == 10 and env.name == "arithmetic"
    assert warm_set == env.warm_start_problems(10, 3)
    assert tokenizer.decode(tokenizer.encode(eval_set[0].prompt), skip_special_tokens=True) == eval_set[0].prompt


# ------------------------------------------------------------------ train --from-data: the checks before Ray
@pytest.fixture
def stored(tmp_path):
    """A run dir whose data set holds two verified arithmetic samples."""
    from branchrl.data.datastore import DataStore, sample_id

    rows = [{"sample_id": sample_id(f"1+{i}#s1#{i}", "0", 0), "env": "arithmetic", "problem_id": f"1+{i}",
             "prompt": f"1+{i}=", "completion": f"#### {1 + i}", "answer": str(1 + i), "policy_version": 0,
             "verifier": "math", "verifier_version": "v", "verdict": "pass", "score": 1.0, "tree_id": f"1+{i}#s1#{i}",
             "branch_path": "0", "tree_value": 1.0, "num_tokens": 6, "seed": 0, "step": 1, "attempt": 0,
             "roles": [{"role": "policy", "start": 0, "end": 6}], "tool_calls": 0}
            for i in range(2)]
    DataStore(tmp_path / "src" / "data").write(1, rows)
    return tmp_path / "src"


def test_train_from_data_refuses_a_data_set_that_does_not_fit_before_ray(stored, tmp_path):
    from branchrl.data.datastore import DataSetError
    from branchrl.from_data import train_from_data  # imports ray and torch; starts nothing

    cases = [(small("env.name=countdown", "env.kwargs={}"), ConfigError,
              "the data set holds samples of env 'arithmetic', but the config evaluates on 'countdown'"),
             (small("model.tiny.max_position=8", "rollout.max_new_tokens=1", "eval.problems=1"), ConfigError,
              "a stored sample is 11 tokens, over model.tiny.max_position=8")]
    for cfg, error, message in cases:
        with pytest.raises(error, match=message):
            train_from_data(cfg, stored, tmp_path / "out")
    shard = stored / "data" / "step-000001.parquet"
    shard.write_bytes(shard.read_bytes()[:-1] + b"X")
    with pytest.raises(DataSetError, match="does not match data_manifest.json"):
        train_from_data(small(), stored, tmp_path / "out")
    assert not (tmp_path / "out").exists()
