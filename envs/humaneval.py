"""HumanEval (Chen et al. 2021): complete a Python function from its signature and docstring.

Records are `{"task_id", "prompt", "canonical_solution", "test", "entry_point"}`. The policy sees the
function stub and replies with the whole function in a ```python block; the `python_tests` verifier
runs the data set's `check(candidate)` code against `entry_point` in its sandbox. The warm-start text
is the stub plus the canonical body. HumanEval has one split (164 tasks), hashed by prompt into eval /
warm-start / train; `eval_percent=100` keeps all of it for evaluation. Loads a local file or folder
(`path=`, e.g. HumanEval.jsonl.gz) or, with no path, `openai/openai_humaneval` from the hub.
Deliberately not here: running code (the verifier's job) or rewriting the stub's imports.
"""

from __future__ import annotations

from .base import Problem
from .datafile import DatasetEnvironment, build, load_records, require

HUB = ("openai/openai_humaneval", None)
PROMPT = ("Complete the following Python function. Reply with the whole function, including the "
          "imports it needs, in one ```python code block.\n\n```python\n{stub}```\n")


def to_problem(record: dict, split: str, index: int) -> tuple[Problem, str]:
    fields = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
    require(record, fields, f"humaneval {split} record {index}")
    stub = record["prompt"]
    code = stub + record["canonical_solution"]
    return Problem(id=record["task_id"], prompt=PROMPT.format(stub=stub), answer="",
                   solution=f"```python\n{code.rstrip()}\n```",
                   extras={"tests": record["test"], "entry_point": record["entry_point"]}), stub


def load_environment(path: str | None = None, eval_percent: int = 20,
                     warm_start_percent: int = 10) -> DatasetEnvironment:
    """path: a HumanEval .jsonl(.gz)/.parquet file or folder; None loads openai/openai_humaneval."""
    problems = build(load_records(path, HUB), to_problem)
    return DatasetEnvironment("humaneval", "python_tests", problems, eval_percent, warm_start_percent)
