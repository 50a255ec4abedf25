"""`branchrl train --from-data` on multi-turn rows: a row's `roles` make its tool spans context, never a target (as
the RL path's `prune.training_sequence` does), in the packed batch and in what a real trainer on Ray trained on;
rows without `roles` (single-turn, or shards written before the column) train on their whole text; a row whose
`roles` do not tile its completion is refused in one line that names it, before anything starts."""

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from branchrl.cli import main
from branchrl.config import dump_config, load_config
from branchrl.data.datastore import SCHEMA, DataStore, read_data_set, sample_id
from branchrl.models import build_char_tokenizer

# a char-level tiny model: one character is one token, so token counts are character counts
SMALL = ["env.name=multiply", "model.tiny.hidden_size=32", "model.tiny.layers=1", "model.tiny.heads=2",
         "model.tiny.kv_heads=2", "model.tiny.intermediate_size=64", "model.tiny.max_position=80",
         "rollout.max_new_tokens=40", "rollout.prompts_per_step=2", "eval.problems=2", "warm_start.problems=0",
         "train.epochs=2", "train.batch_size=2", "train.threads=1", "rollout.workers=1", "verify.workers=1"]
CALL, OUT = "<py>print({a}*{b})</py>", "<out>{p}</out>"


def tool_row(a: int, b: int, **change) -> dict:
    """A verified multiply transcript as the RL path stores it: policy call, tool output, policy answer."""
    parts = [("policy", CALL.format(a=a, b=b)), ("tool", OUT.format(p=a * b)), ("policy", f" #### {a * b}")]
    roles, at = [], 0
    for role, text in parts:
        roles.append({"role": role, "start": at, "end": at + len(text)})
        at += len(text)
    return {**row(a, b, "".join(text for _, text in parts), roles, tool_calls=1), **change}


def row(a: int, b: int, completion: str, roles: list[dict] | None, tool_calls: int = 0) -> dict:
    tree = f"{a}*{b}#s1#0"
    return {"sample_id": sample_id(tree, "0", 0), "env": "multiply", "problem_id": f"{a}*{b}", "prompt": f"{a}*{b}=",
            "completion": completion, "answer": str(a * b), "policy_version": 0, "verifier": "math",
            "verifier_version": "v", "verdict": "pass", "score": 1.0, "tree_id": tree, "branch_path": "0",
            "tree_value": 1.0, "num_tokens": len(completion) + 1, "seed": 0, "step": 1, "attempt": 0,
            "roles": roles, "tool_calls": tool_calls}


def single_turn(a: int, b: int) -> dict:
    text = f" #### {a * b}"
    return row(a, b, text, [{"role": "policy", "start": 0, "end": len(text)}])


def stored(tmp_path, rows: list[dict]):
    DataStore(tmp_path / "src" / "data").write(1, rows)
    return tmp_path / "src"


def policy_chars(r: dict) -> int:
    return sum(s["end"] - s["start"] for s in r["roles"] if s["role"] == "policy")


def test_tool_spans_are_context_in_the_packed_batch_and_plain_rows_train_whole(tmp_path):
    from branchrl.from_data import COLUMNS, OPTIONAL, sft_pairs
    from branchrl.training.losses import pack_batch
    from branchrl.training.trainer import encode_pair

    rows = [tool_row(347, 29), single_turn(12, 34)]
    pairs = sft_pairs(read_data_set(stored(tmp_path, rows), COLUMNS, OPTIONAL))
    assert pairs[1] == ("12*34=", " #### 408")   # policy spans only: the text, exactly as before roles existed
    tok = build_char_tokenizer()
    seqs = [encode_pair(tok, *pair) for pair in pairs]
    ids, _, mask = pack_batch(seqs, tok.pad_token_id)
    for b, (r, (p, c, *_)) in enumerate(zip(rows, seqs)):
        targets = ids[b, 1:][mask[b, :-1]].tolist()   # the tokens the loss predicts (a position's NEXT token)
        assert tok.decode(targets[:-1]) == "".join(r["completion"][s["start"]:s["end"]] for s in r["roles"]
                                                   if s["role"] == "policy")
        assert targets[-1] == tok.eos_token_id and len(targets) == policy_chars(r) + 1
    tool = rows[0]["roles"][1]
    prompt = len(seqs[0][0])
    # the tool's characters are in the sequence (the policy reads them) but no position predicts one
    assert tok.decode(ids[0, prompt + tool["start"]:prompt + tool["end"]].tolist()) == "<out>10063</out>"
    assert not mask[0, prompt + tool["start"] - 1:prompt + tool["end"] - 1].any()
    assert mask[0, prompt - 1:prompt + tool["start"] - 1].all() and mask[0, prompt + tool["end"] - 1].item()


def test_shards_written_before_roles_existed_train_on_their_whole_text(tmp_path):
    from branchrl.from_data import COLUMNS, OPTIONAL, sft_pairs

    old = pa.schema([f for f in SCHEMA if f.name not in ("roles", "tool_calls")])
    data = tmp_path / "old" / "data"
    data.mkdir(parents=True)
    rows = [{k: v for k, v in tool_row(347, 29).items() if k in old.names}]
    pq.write_table(pa.Table.from_pylist(rows, schema=old), data / "step-000001.parquet")
    pq.write_table(pa.Table.from_pylist([tool_row(12, 34, step=2)], schema=SCHEMA), data / "step-000002.parquet")
    pairs = sft_pairs(read_data_set(data, COLUMNS, OPTIONAL))
    assert pairs[0] == ("347*29=", rows[0]["completion"])   # no roles: the whole text, as before
    assert [role for role, _ in pairs[1][1]] == ["policy", "tool", "policy"]


def test_train_from_data_on_ray_trains_only_the_policy_tokens(ray_cluster, tmp_path):
    """A real trainer counts the tokens it put a loss on: two epochs of every row's policy characters + EOS, not the
    tool outputs (training on whole texts would count every completion character)."""
    from branchrl.from_data import train_from_data

    rows = [tool_row(347, 29), tool_row(518, 76), single_turn(12, 34)]
    summary = train_from_data(load_config(None, SMALL), stored(tmp_path, rows), tmp_path / "out")
    assert summary["rows"] == 3 and summary["tool_rows"] == 2 and math.isfinite(summary["loss"])
    assert summary["trained_tokens"] == 2 * sum(policy_chars(r) + 1 for r in rows)
    assert summary["trained_tokens"] < 2 * sum(len(r["completion"]) + 1 for r in rows)


def spans(*triples) -> list[dict]:
    return [{"role": r, "start": s, "end": e} for r, s, e in triples]


@pytest.mark.parametrize("roles, message", [
    (spans(("policy", 0, 22), ("tool", 22, 38), ("answer", 38, 49)), "roles[2] has unknown role 'answer'"),
    (spans(("policy", 0, 22), ("tool", 22, 38), ("policy", 38, 60)), "roles[2] [38, 60) is out of range of the "
                                                                     "49-character completion"),
    (spans(("policy", 0, 22), ("tool", 22, -1)), "roles[1] [22, -1) is out of range"),
    (spans(("policy", 0, 22), ("tool", 15, 38), ("policy", 38, 49)), "roles[1] [15, 38) overlaps the span before "
                                                                     "it, which ends at 22"),
    (spans(("policy", 0, 22), ("tool", 25, 38), ("policy", 38, 49)), "roles[1] [25, 38) leaves characters 22..25 "
                                                                     "without a role"),
    (spans(("policy", 0, 22), ("tool", 22, 38)), "its roles end at character 38 of a 49-character completion"),
])
def test_malformed_roles_are_one_line_naming_the_row_before_anything_starts(tmp_path, capsys, roles, message):
    good = tool_row(347, 29)
    assert len(good["completion"]) == 49 and [s["end"] for s in good["roles"]] == [22, 38, 49]
    bad = tool_row(518, 76, roles=roles)
    cfg = tmp_path / "cfg.yaml"
    dump_config(load_config(None, SMALL), cfg)
    argv = ["train", str(cfg), "--from-data", str(stored(tmp_path, [good, bad])), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"data-set row '{bad['sample_id']}'" in err and message in err, err
    assert not (tmp_path / "out").exists()
