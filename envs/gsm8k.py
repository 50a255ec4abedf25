"""GSM8K grade-school word problems (Cobbe et al. 2021), checked by the `math` verifier.

Records are `{"question", "answer"}` where the answer is a worked solution ending `#### <number>`;
the number is the gold answer and the whole solution is the warm-start text. The data set's test
split is the eval set; its train split is divided between warm-start and train by a hash of the
question (see `datafile`). Loads a local file or folder (`path=`, e.g. a folder with train.jsonl and
test.jsonl) or, with no path, `openai/gsm8k` from the hub. Deliberately not here: calculator
annotations are kept as they are (`<<3*4=12>>`), since the verifier only reads the `####` line.
"""

from __future__ import annotations

from functools import partial

from branchrl.verifiers.math_answer.extract import gsm8k_answer, normalise

from .base import Problem
from .datafile import DatasetEnvironment, build, load_records, require
from .tools import TOOL_NOTE, calculator_to_tool, check_tools, dataset_env

HUB = ("openai/gsm8k", "main")
PROMPT = ("Solve the following math problem step by step. End your reply with a line of the form "
          "`#### <answer>`, where <answer> is just the final number.\n\n{question}\n")
QUOTE_CHARS = 80  # how much of a malformed solution the error quotes


def gold_answer(solution: str) -> str:
    """'... #### 1,234' -> '1234': the last `####` line as the math verifier reads it, normalised."""
    answer = normalise(gsm8k_answer(solution) or "")
    if not answer:
        raise ValueError(f"GSM8K answer has no '#### <number>' line: {solution[-QUOTE_CHARS:]!r}")
    return answer


def to_problem(record: dict, split: str, index: int, tools: bool = False) -> tuple[Problem, str]:
    require(record, ("question", "answer"), f"gsm8k {split} record {index}")
    question, solution = record["question"], record["answer"]
    prompt = (TOOL_NOTE if tools else "") + PROMPT.format(question=question)
    worked = calculator_to_tool(solution) if tools else solution
    return Problem(id=f"{split}/{index}", prompt=prompt, answer=gold_answer(solution), solution=worked), question



def load_environment(path: str | None = None, eval_percent: int = 20, warm_start_percent: int = 10,
                     tools: int = 0) -> DatasetEnvironment:
    """path: a GSM8K .jsonl/.parquet file or a folder of train/test files; None loads openai/gsm8k.
    eval_percent applies only when the source has no test split; warm_start_percent of the rest
    (by question hash) is the warm-start set. tools=N: the tool variant (the prompt offers the Python tool,
    up to N calls per episode; worked solutions call it where GSM8K's calculator annotations are)."""
    problems = build(load_records(path, HUB), partial(to_problem, tools=check_tools(tools) > 0))
    # numeric: the gold is always a number, so "#### 12+5" must not count as the answer 17
    return dataset_env(tools, "gsm8k", "math", problems, eval_percent, warm_start_percent,
                       verifier_args={"numeric": True}, answer_marker="####")
