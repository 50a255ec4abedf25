"""Write `branchrl verify` records for every HumanEval and MBPP reference solution, and for every
HumanEval function with its body replaced by `return None` (which must all fail).

    .venv/bin/python bench/reference_records.py /tmp/refs --data ../shared/data
    .venv/bin/branchrl verify /tmp/refs/humaneval_canonical.jsonl --jobs 4 > /tmp/refs/he.out
    .venv/bin/branchrl verify /tmp/refs/humaneval_return_none.jsonl --jobs 4 > /tmp/refs/he_none.out
    .venv/bin/branchrl verify /tmp/refs/mbpp_reference.jsonl --jobs 4 > /tmp/refs/mbpp.out

The per-verdict counts print on stderr. Records come from the same envs a run uses.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from branchrl.envs import load_env


def all_problems(name: str, path: Path):
    env = load_env(name, path=str(path), eval_percent=100, warm_start_percent=0)
    return env, env.splits["eval"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    he_env, he = all_problems("humaneval", args.data / "humaneval")
    mbpp_env, mbpp = all_problems("mbpp", args.data / "mbpp")
    files = {
        "humaneval_canonical.jsonl": [he_env.verifier_record(p, p.solution) for p in he],
        "humaneval_return_none.jsonl": [he_env.verifier_record(p, _return_none(p)) for p in he],
        "mbpp_reference.jsonl": [mbpp_env.verifier_record(p, p.solution) for p in mbpp],
    }
    for name, records in files.items():
        (args.out / name).write_text("".join(json.dumps({**r, "timeout_s": 10}) + "\n" for r in records))
        print(f"{args.out / name}: {len(records)} records")


def _return_none(problem) -> str:
    stub = problem.solution.split("```python\n", 1)[1].rsplit("```", 1)[0]
    header = stub[: stub.index(problem.extras["entry_point"] + "(")]
    body_start = stub.index(":\n", len(header)) + 2  # the signature line ends the def
    return f"```python\n{stub[:body_start]}    return None\n```"


if __name__ == "__main__":
    main()
