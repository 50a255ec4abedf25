"""Procedural program synthesis: write a small Python function `f` from input/output examples.

A problem is a chain of 1..max_ops simple operations on an int, a list of ints or a string (sort,
map, filter, slice, sum, upper-case, ...), for example `list:sort|map_mul_3|sum`. The prompt shows
the signature and a few examples; the `python_tests` verifier runs held-out `assert f(...) == ...`
lines in its sandbox. The worked solution is the chain written as one assignment per line, so a tiny
model can learn the code path end to end. Expected outputs come from running that generated
solution (our own code, never model output), so examples, tests and solution cannot disagree. The
problem id is the chain; the split is a hash of it, so a held-out function is never trained on
with other examples. Deliberately not here: loops, recursion or anything a chain cannot express,
and detection of different chains that compute the same function.
"""

from __future__ import annotations

import random
import string

from .base import Problem, ProceduralEnvironment

TYPES = {"int": "int", "list": "list[int]", "str": "str"}
MAX_ABS_OUTPUT = 10**6  # chains whose outputs grow past this are redrawn (keeps tests readable)
MAX_OUTPUT_LEN = 40  # ...and so are chains whose list or string outputs get longer than this
INT_INPUTS = (-20, 50)  # an int input is drawn from this range
LIST_VALUES, LIST_LENGTH = (-9, 20), (0, 7)  # a list input: values and length
STR_LENGTH = (1, 8)  # a string input: lower-case letters, this many
MIN_DISTINCT_OUTPUTS = 3  # a chain that maps its inputs to fewer distinct outputs is too easy to guess
INPUT_DRAWS = 200  # tries to find enough distinct inputs for one problem
PROMPT = ("Write a Python function `{signature}` that fits these examples:\n{examples}\n"
          "Reply with the function in one ```python code block.\n")


def _ops() -> dict[str, tuple[str, str, str]]:
    """name -> (input type, output type, expression of x)."""
    ops = {"square": ("int", "int", "x * x"), "abs": ("int", "int", "abs(x)"), "negate": ("int", "int", "-x"),
           "sort": ("list", "list", "sorted(x)"), "reverse": ("list", "list", "x[::-1]"),
           "keep_even": ("list", "list", "[v for v in x if v % 2 == 0]"),
           "keep_odd": ("list", "list", "[v for v in x if v % 2 == 1]"),
           "keep_positive": ("list", "list", "[v for v in x if v > 0]"),
           "dedupe": ("list", "list", "list(dict.fromkeys(x))"),
           "sum": ("list", "int", "sum(x)"), "len": ("list", "int", "len(x)"),
           "max": ("list", "int", "max(x, default=0)"), "min": ("list", "int", "min(x, default=0)"),
           "count_even": ("list", "int", "sum(1 for v in x if v % 2 == 0)"),
           "upper": ("str", "str", "x.upper()"), "str_reverse": ("str", "str", "x[::-1]"),
           "double_chars": ("str", "str", "''.join(c + c for c in x)"),
           "drop_vowels": ("str", "str", "''.join(c for c in x if c not in 'aeiouAEIOU')"),
           "str_len": ("str", "int", "len(x)"), "count_vowels": ("str", "int", "sum(c in 'aeiouAEIOU' for c in x)")}
    for k in range(2, 6):
        ops |= {f"add_{k}": ("int", "int", f"x + {k}"), f"mul_{k}": ("int", "int", f"x * {k}"),
                f"floordiv_{k}": ("int", "int", f"x // {k}"), f"mod_{k}": ("int", "int", f"x % {k}"),
                f"map_add_{k}": ("list", "list", f"[v + {k} for v in x]"),
                f"map_mul_{k}": ("list", "list", f"[v * {k} for v in x]"),
                f"take_{k}": ("list", "list", f"x[:{k}]"), f"drop_{k}": ("list", "list", f"x[{k}:]"),
                f"str_take_{k}": ("str", "str", f"x[:{k}]"), f"str_repeat_{k}": ("str", "str", f"x * {k}")}
    return ops


OPS = _ops()


def source(problem_id: str) -> str:
    """The worked solution for a chain id such as 'list:sort|sum'."""
    kind, chain = problem_id.split(":")
    names = chain.split("|")
    lines = [f"    x = {OPS[n][2]}" for n in names[:-1]] + [f"    return {OPS[names[-1]][2]}"]
    return f"def f(x: {TYPES[kind]}) -> {TYPES[OPS[names[-1]][1]]}:\n" + "\n".join(lines) + "\n"


def random_input(kind: str, rng: random.Random):
    if kind == "int":
        return rng.randint(*INT_INPUTS)
    if kind == "list":
        return [rng.randint(*LIST_VALUES) for _ in range(rng.randint(*LIST_LENGTH))]
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(*STR_LENGTH)))


def _too_big(value) -> bool:
    if isinstance(value, int):
        return abs(value) > MAX_ABS_OUTPUT
    return len(value) > MAX_OUTPUT_LEN or (isinstance(value, list) and any(_too_big(v) for v in value))


class SynthFn(ProceduralEnvironment):
    def __init__(self, max_ops: int = 3, n_examples: int = 4, n_tests: int = 5):
        for name, value, lo, hi in [("max_ops", max_ops, 1, 4), ("n_examples", n_examples, 1, 10),
                                    ("n_tests", n_tests, 1, 20)]:
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")
        super().__init__(name="synth_fn", verifier="python_tests")
        self.max_ops, self.n_examples, self.n_tests = max_ops, n_examples, n_tests

    def problem(self, problem_id: str) -> Problem | None:
        """The problem for a chain id, or None when the chain is degenerate on its sampled inputs."""
        code = source(problem_id)
        namespace: dict = {}
        exec(compile(code, f"<synth_fn {problem_id}>", "exec"), namespace)  # our own generated code
        rng = random.Random(problem_id)
        inputs: list = []
        for _ in range(INPUT_DRAWS):
            if len(inputs) == self.n_examples + self.n_tests:
                break
            value = random_input(problem_id.split(":")[0], rng)
            if value not in inputs:
                inputs.append(value)
        outputs = [namespace["f"](list(v) if isinstance(v, list) else v) for v in inputs]
        if len(inputs) < self.n_examples + self.n_tests or len({repr(o) for o in outputs}) < MIN_DISTINCT_OUTPUTS \
                or outputs == inputs or any(_too_big(o) for o in outputs):
            return None
        pairs = [f"f({i!r}) == {o!r}" for i, o in zip(inputs, outputs)]
        signature = code.splitlines()[0]  # "def f(x: list[int]) -> int:"
        prompt = PROMPT.format(signature=signature[4:-1], examples="\n".join(pairs[:self.n_examples]))
        tests = "\n".join(f"assert {pair}" for pair in pairs[self.n_examples:])
        return Problem(id=problem_id, prompt=prompt, answer="", solution=f"```python\n{code}```",
                       extras={"tests": tests})

    def _chain(self, rng: random.Random) -> str:
        kind = rng.choice(sorted(TYPES))
        names, current = [], kind
        for _ in range(rng.randint(1, self.max_ops)):
            choices = [n for n, (src, _, _) in OPS.items() if src == current and (not names or n != names[-1])]
            names.append(rng.choice(choices))
            current = OPS[names[-1]][1]
        return f"{kind}:{'|'.join(names)}"

    def candidate(self, rng: random.Random):
        pid = self._chain(rng)
        return pid, lambda: self.problem(pid)


def load_environment(max_ops: int = 3, n_examples: int = 4, n_tests: int = 5) -> SynthFn:
    """Chains of 1..max_ops operations; n_examples shown in the prompt, n_tests held out as asserts."""
    return SynthFn(max_ops=max_ops, n_examples=n_examples, n_tests=n_tests)
