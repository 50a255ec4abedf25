"""Checking an environment before a run: its splits never share a problem, and its worked solutions pass.

`check_env(env)` draws eval problems once and warm-start and train problems for several seeds,
then looks for any problem (by id, or by prompt text) in two splits, and sends every distinct
warm-start problem's worked `solution` through the env's own verifier record and `verify`: a worked
solution that does not pass would teach the policy a wrong answer in the warm start. When a split
holds fewer problems than asked for, fewer are drawn and a note says so.
Deliberately not here: printing and exit codes (the `branchrl env check` command), or any model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

from branchrl.verifiers import verify

from .base import EnvError, Environment, Problem

DETAILS_CHARS = 200  # a failing solution's verifier details are cut to this
SHOWN = 3  # overlapping problems named per pair of splits
PROMPT_CHARS = 60  # a shared prompt is quoted up to this length


@dataclass
class EnvReport:
    drawn: dict[str, int] = field(default_factory=dict)  # split -> distinct problems drawn
    notes: list[str] = field(default_factory=list)  # what was drawn smaller than asked, and why
    overlaps: list[str] = field(default_factory=list)  # one line per pair of splits that share problems
    solutions: int = 0  # worked solutions checked
    failures: list[str] = field(default_factory=list)  # one line per worked solution that does not pass

    @property
    def ok(self) -> bool:
        return not self.overlaps and not self.failures


def check_env(env: Environment, problems: int = 50, seeds: tuple[int, ...] = (0, 1, 2)) -> EnvReport:
    report = EnvReport()
    splits = {
        "eval": _draw(report, "eval", lambda n: env.eval_problems(n), problems),
        "warm_start": _union(_draw(report, "warm_start", lambda n: env.warm_start_problems(n, s), problems)
                             for s in seeds),
        "train": _union(_draw(report, "train", lambda n: env.train_problems(n, s), problems) for s in seeds),
    }
    report.drawn = {name: len(drawn) for name, drawn in splits.items()}
    report.notes = list(dict.fromkeys(report.notes))  # one note per split, not one per seed
    for (a, pa), (b, pb) in combinations(splits.items(), 2):
        report.overlaps += _overlap(a, pa, b, pb)
    worked = [p for p in splits["warm_start"] if p.solution]
    report.solutions = len(worked)
    for p in worked:
        result = verify(env.verifier_record(p, p.solution))
        if result.verdict != "pass":
            report.failures.append(f"solution of {p.id} is {result.verdict}: {result.details[:DETAILS_CHARS]}")
    return report


def _draw(report: EnvReport, split: str, draw, n: int) -> list[Problem]:
    """draw(n), halving n while the split holds fewer problems (an EnvError says so)."""
    asked = n
    while n > 0:
        try:
            problems = draw(n)
        except EnvError:
            n //= 2
            continue
        if n < asked:
            report.notes.append(f"{split}: the split holds fewer than {asked} problems; drew {n}")
        return problems
    report.notes.append(f"{split}: could not draw a single problem")
    return []


def _union(draws) -> list[Problem]:
    """Distinct problems of several draws, in order (one problem id once)."""
    return list({p.id: p for drawn in draws for p in drawn}.values())


def _overlap(a: str, pa: list[Problem], b: str, pb: list[Problem]) -> list[str]:
    shared = sorted({p.id for p in pa} & {p.id for p in pb})
    same_text = sorted({p.prompt for p in pa} & {p.prompt for p in pb})
    out = []
    if shared:
        out.append(f"{a} and {b} share {len(shared)} problem ids: {', '.join(shared[:SHOWN])}")
    if same_text:
        quoted = ", ".join(repr(t[:PROMPT_CHARS]) for t in same_text[:SHOWN])
        out.append(f"{a} and {b} share {len(same_text)} prompts: {quoted}")
    return out
