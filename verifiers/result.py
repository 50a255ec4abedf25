"""The record every verifier returns: a verdict, a score, the time spent and a short reason.

A `Result` is plain data, so it crosses process and Ray boundaries and lands in the data set's
provenance columns unchanged. It deliberately holds no policy about what a verdict is worth to
training (that is the trainer's business) and no exception objects (only their text).
"""

from dataclasses import asdict, dataclass

VERDICTS = ("pass", "fail", "timeout", "memory", "error")


@dataclass(frozen=True)
class Result:
    verdict: str  # one of VERDICTS
    score: float  # 1.0 for pass, else 0.0; a float so partial-credit verifiers fit later
    seconds: float  # wall time spent verifying
    details: str  # short human-readable reason, e.g. "extracted '843' == gold '843'"

    def __post_init__(self) -> None:
        # A bad verdict here is our bug, never the model's: fail loudly.
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r} is not one of {VERDICTS}")

    def to_dict(self) -> dict:
        return asdict(self)

    def with_seconds(self, seconds: float) -> "Result":
        return Result(self.verdict, self.score, seconds, self.details)


def passed(details: str, seconds: float = 0.0) -> Result:
    return Result("pass", 1.0, seconds, details)


def failed(verdict: str, details: str, seconds: float = 0.0) -> Result:
    """Any non-pass verdict ("fail", "timeout", "memory", "error") scores 0.0."""
    if verdict == "pass":
        raise ValueError("failed() needs a non-pass verdict; use passed()")
    return Result(verdict, 0.0, seconds, details)
