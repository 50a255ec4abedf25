"""Procedural multi-digit multiplication that a tiny model solves by calling the Python tool.

`347*29=` is answered `<py>print(347*29)</py><out>10063</out> #### 10063`: the policy writes a call,
the sandboxed tool's output comes back as `<out>...</out>` (context, not trained on), and the policy
copies the result into the GSM8K-style final answer that the math verifier checks. A character-level
model cannot multiply three digits by two in its head, but it can learn to copy the operands into a
call and the output into the answer, so this is the CPU demo where the tool is needed
(`configs/tool_demo.yaml`). Splits hash the operand pair, order ignored, like arithmetic.
`product_digits` keeps only problems whose product has that many digits: the demo's tiny model copies a
number of one fixed length far more reliably (with 4- and 5-digit products mixed, after RL it still
wrote 4-digit results with their first digit doubled, `9889` -> `998899`, on 17% of held-out problems).
"""

from __future__ import annotations

import random

from .base import Problem, ProceduralEnvironment, hashed_split
from .tools import CLOSE, OPEN, OUT_CLOSE, OUT_OPEN, PythonTool


def split_of(problem_id: str) -> str:
    return hashed_split("*".join(sorted(problem_id.split("*"), key=int)))


def worked_solution(a: int, b: int, tool: bool = True) -> str:
    if not tool:
        return f"#### {a * b}"
    return f"{OPEN}print({a}*{b}){CLOSE}{OUT_OPEN}{a * b}{OUT_CLOSE} #### {a * b}"


def uses_tool(problem_id: str, tool_share: float) -> bool:
    """Whether the worked solution of this problem calls the tool: a fixed draw per problem, seed-independent."""
    return random.Random(f"tool:{problem_id}").random() < tool_share


class Multiply(PythonTool, ProceduralEnvironment):
    too_few_hint = "ask for fewer or raise digits"
    split_of = staticmethod(split_of)

    def __init__(self, digits: int = 3, digits_b: int = 2, max_turns: int = 2, product_digits: int = 0,
                 tool_share: float = 1.0):
        for name, value in (("digits", digits), ("digits_b", digits_b)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 9:
                raise ValueError(f"{name} must be an integer in 1..9, got {value!r}")
        if product_digits and product_digits not in (digits + digits_b - 1, digits + digits_b):
            raise ValueError(f"product_digits must be 0 (any) or {digits + digits_b - 1} or {digits + digits_b} for "
                             f"{digits}- by {digits_b}-digit operands, got {product_digits!r}")
        if isinstance(max_turns, bool) or not isinstance(max_turns, int) or max_turns < 1:
            raise ValueError(f"max_turns must be a positive integer (tool calls per episode), got {max_turns!r}")
        if isinstance(tool_share, bool) or not isinstance(tool_share, (int, float)) or not 0 < tool_share <= 1:
            raise ValueError(f"tool_share must be a number in (0, 1] (share of worked solutions that call the tool), "
                             f"got {tool_share!r}")
        super().__init__(name="multiply", verifier="math", verifier_args={"numeric": True}, answer_marker="####",
                         tool_stops=(CLOSE,), max_turns=max_turns)
        self.digits, self.digits_b, self.product_digits = digits, digits_b, product_digits
        self.tool_share = float(tool_share)

    def candidate(self, rng: random.Random):
        a = rng.randint(10 ** (self.digits - 1), 10**self.digits - 1)
        b = rng.randint(10 ** (self.digits_b - 1), 10**self.digits_b - 1)
        if self.product_digits and len(str(a * b)) != self.product_digits:
            return None
        pid = f"{a}*{b}"
        return pid, lambda: Problem(id=pid, prompt=f"{pid}=", answer=str(a * b),
                                    solution=worked_solution(a, b, uses_tool(pid, self.tool_share)))


def load_environment(digits: int = 3, digits_b: int = 2, max_turns: int = 2, product_digits: int = 0,
                     tool_share: float = 1.0) -> Multiply:
    """product_digits: only problems whose product has this many digits (0 = any); tool_share: share of the
    worked (warm-start) solutions that call the tool, the rest answer from memory."""
    return Multiply(digits=digits, digits_b=digits_b, max_turns=max_turns, product_digits=product_digits,
                    tool_share=tool_share)
