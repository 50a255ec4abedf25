"""rollout.problem_order for `run`: `epochs` walks a data-set env's train split as a data loader does (a fresh
permutation per epoch, no problem twice in one), a pure function of the batch number (a resumed run continues
the same order); `draw` stays the default; a procedural env refuses `epochs` with one line."""

from collections import Counter
from pathlib import Path

from branchrl.cli import main
from branchrl.config import dump_config, load_config
from branchrl.context import Context
from branchrl.envs import load_env
from branchrl.feed import Feed
from branchrl.launch import Roles
from branchrl.progress import Progress

GSM8K = str(Path(__file__).parent / "fixtures" / "data" / "gsm8k")   # 16 train problems


def feed(*overrides: str) -> Feed:
    cfg = load_config(None, ["env.name=gsm8k", f"env.kwargs.path={GSM8K}", "rollout.prompts_per_step=5", *overrides])
    env = load_env(cfg.env.name, **cfg.env.kwargs)
    # no actors: `problems` only decides what a batch holds
    return Feed(Context(cfg, env, None, Roles(None, [], []), None, Path("."), Progress(1)), depth=0)


def test_epochs_walk_the_whole_split_once_per_epoch_and_resume_gives_the_same_batches():
    f = feed("rollout.problem_order=epochs")
    batches = [[p.id for p in f.problems(key)] for key in range(1, 7)]   # 16 // 5 = 3 batches per epoch
    assert all(len(b) == len(set(b)) == 5 for b in batches)
    for epoch in (batches[:3], batches[3:]):
        ids = [i for b in epoch for i in b]
        assert len(set(ids)) == 15, "a problem came twice in one epoch"
    assert batches[:3] != batches[3:]   # each epoch its own permutation
    assert max(Counter(i for b in batches for i in b).values()) == 2
    assert [p.id for p in feed("rollout.problem_order=epochs").problems(5)] == batches[4]   # resume: same batch


def test_draw_is_the_default_and_draws_each_batch_on_its_own():
    f = feed()
    assert f.ctx.cfg.rollout.problem_order == "draw"
    batches = [[p.id for p in f.problems(key)] for key in range(1, 7)]
    assert all(len(set(b)) == 5 for b in batches)
    assert batches == [[p.id for p in feed().problems(key)] for key in range(1, 7)]


def test_a_procedural_env_refuses_epochs_with_one_line(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    dump_config(load_config(None, ["env.name=echo", "eval.problems=8"]), cfg)
    assert main(["run", str(cfg), "--out", str(tmp_path / "out"), "rollout.problem_order=epochs"]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not say how many train problems" in err and "\n" not in err, err
