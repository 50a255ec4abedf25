"""MBPP, Mostly Basic Python Problems (Austin et al. 2021): write a function from a one-line task.

Records are `{"task_id", "text", "code", "test_list"}` plus optional `test_setup_code`. The prompt
shows the task and the first assert (it fixes the function's name and signature); the `python_tests`
verifier runs all of `test_list`, after the setup code, in its sandbox. The warm-start text is the
reference code. Splits: a source with a test split (the hub's `full` config) uses it as eval and
hashes the others into warm-start / train; a single file (such as tasks 1-419) is hashed by task text
into all three. Loads a local file or folder (`path=`) or, with no path,
`google-research-datasets/mbpp` from the hub. Deliberately not here: the `challenge_test_list`
(harder hidden tests some tasks carry); add them to `tests` in a variant env if wanted.
"""

from __future__ import annotations

from .base import Problem
from .datafile import DatasetEnvironment, build, load_records, require

HUB = ("google-research-datasets/mbpp", "full")
PROMPT = ("{text}\nYour code should pass tests like this one:\n{example}\n"
          "Reply with the function in one ```python code block.\n")


def to_problem(record: dict, split: str, index: int) -> tuple[Problem, str]:
    require(record, ("task_id", "text", "code", "test_list"), f"mbpp {split} record {index}")
    tests = [t.strip() for t in record["test_list"]]
    if not tests:
        raise ValueError(f"mbpp {split} record {index} (task {record['task_id']}): empty test_list")
    setup = (record.get("test_setup_code") or "").strip()
    code = record["code"].replace("\r\n", "\n").strip()
    return Problem(id=f"mbpp/{record['task_id']}", prompt=PROMPT.format(text=record["text"].strip(), example=tests[0]),
                   answer="", solution=f"```python\n{code}\n```",
                   extras={"tests": "\n".join([setup, *tests] if setup else tests)}), record["text"]


def load_environment(path: str | None = None, eval_percent: int = 20,
                     warm_start_percent: int = 10) -> DatasetEnvironment:
    """path: an MBPP .jsonl/.parquet file or folder; None loads google-research-datasets/mbpp (full)."""
    problems = build(load_records(path, HUB), to_problem)
    return DatasetEnvironment("mbpp", "python_tests", problems, eval_percent, warm_start_percent)
