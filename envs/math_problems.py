"""Competition math in the MATH / MATH-500 format (Hendrycks et al. 2021), checked by the `math` verifier.

Records are `{"problem", "solution"}` with the final answer in the solution's last `\\boxed{}`, plus
an `answer` field when the source has one (MATH-500 does; it wins over the boxed text) and an
optional `unique_id`. The env's name is `math`; the module is `math_problems` so that it can never
shadow the standard library's `math`. Loads a local file or folder (`path=`) or, with no path, a hub
data set (`HuggingFaceH4/MATH-500` by default). MATH-500 has one split, so problems are hashed into
eval / warm-start / train by their text; a source with a test split and a train split uses test as
eval. Deliberately not here: answer normalisation (the verifier's job) and the asy diagrams, which
stay in the text as they are.
"""

from __future__ import annotations

from functools import partial

from branchrl.verifiers.math_answer.extract import boxed_contents

from .base import Problem
from .datafile import DatasetEnvironment, build, load_records, require
from .tools import TOOL_NOTE, check_tools, dataset_env

PROMPT = ("Solve the following problem. Reason step by step, then put your final answer in "
          "\\boxed{{}}.\n\n{problem}\n")


def gold_answer(record: dict, where: str) -> str:
    """The record's `answer` field, else the last `\\boxed{}` of its solution."""
    if str(record.get("answer") or "").strip():
        return str(record["answer"]).strip()
    boxed = boxed_contents(record["solution"])
    if not boxed:
        raise ValueError(f"{where}: no 'answer' field and no \\boxed{{}} in the solution")
    return boxed[-1].strip()


def to_problem(record: dict, split: str, index: int, tools: bool = False) -> tuple[Problem, str]:
    where = f"math {split} record {index}"
    require(record, ("problem", "solution"), where)
    pid = str(record.get("unique_id") or f"{split}/{index}")
    prompt = (TOOL_NOTE if tools else "") + PROMPT.format(problem=record["problem"])
    return Problem(id=pid, prompt=prompt, answer=gold_answer(record, where),
                   solution=record["solution"]), record["problem"]


def load_environment(path: str | None = None, hub: str = "HuggingFaceH4/MATH-500", hub_config: str | None = None,
                     eval_percent: int = 20, warm_start_percent: int = 10, tools: int = 0) -> DatasetEnvironment:
    """path: a MATH-format .jsonl/.parquet file or folder; None loads `hub` (with `hub_config`). tools=N: the tool
    variant (the prompt offers the Python tool, up to N calls per episode; worked solutions stay as written)."""
    problems = build(load_records(path, (hub, hub_config)), partial(to_problem, tools=check_tools(tools) > 0))
    return dataset_env(tools, "math", "math", problems, eval_percent, warm_start_percent, answer_marker="\\boxed")
