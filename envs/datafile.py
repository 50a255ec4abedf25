"""Shared plumbing for environments built on a real data set: read records, split them, sample them.

A data-set environment (gsm8k, math, humaneval, mbpp) is one file that turns raw records into
`Problem`s and hands them to `DatasetEnvironment`, which owns the split rule:
- when the source has a `test` split and another one, `test` is the held-out eval set and the other
  splits are divided between warm-start and train by a hash of each problem's key text;
- otherwise every record is hashed into eval / warm-start / train (percentages are arguments).
The hash is of the problem text, so a problem keeps its split whatever the file order, and two copies
of one question always land together; train and warm-start also drop any question that is in eval.

Records come from a local file or folder (`.jsonl`, `.jsonl.gz`, `.json`, `.parquet`) or, with no
path, from the Hugging Face hub through `datasets`. Deliberately not here: prompt text, answer
extraction, or anything that knows one data set's fields.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Callable, Iterable

from .base import EnvError, Environment, Problem, bucket

DATA_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet")
SPLIT_NAMES = ("train", "test", "validation", "prompt")
ERROR_CHARS = 200  # a hub error's text is cut to this
SHOWN = 3  # repeated problem ids named in the error


# ---------------------------------------------------------------------------------------- reading
def _suffix(path: Path) -> str | None:
    return next((s for s in DATA_SUFFIXES if path.name.endswith(s)), None)


def read_file(path: Path) -> list[dict]:
    """All records of one data file; a bad line names the file and line number."""
    suffix = _suffix(path)
    if suffix == ".parquet":
        import pyarrow.parquet as pq  # only needed for parquet sources

        return pq.read_table(path).to_pylist()
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise ValueError(f"{path}: a .json data file must hold a list of objects")
        return data
    opener = gzip.open if suffix == ".jsonl.gz" else open
    records = []
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{number}: not JSON ({e.msg})") from None
    return records


def read_local(path: str | Path) -> dict[str, list[dict]]:
    """Records by split. A file is one split named by its stem ('test.jsonl' -> test, else 'all');
    a folder holds split files (train.jsonl, test.jsonl, ...) or exactly one data file."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"path {str(path)!r} does not exist; pass path= a data file or folder")
    files = sorted(p for p in path.iterdir() if _suffix(p)) if path.is_dir() else [path]
    if not files or any(_suffix(f) is None for f in files):
        raise ValueError(f"path {str(path)!r}: no data file ending in {', '.join(DATA_SUFFIXES)}")
    named = {f.name[: -len(_suffix(f))]: f for f in files}
    if path.is_dir() and len(files) > 1 and not set(named) <= set(SPLIT_NAMES):
        raise ValueError(f"path {str(path)!r} holds several data files {sorted(named)}; name them by split "
                         f"({', '.join(SPLIT_NAMES)}) or pass path= one file")
    return {(stem if stem in SPLIT_NAMES else "all"): read_file(f) for stem, f in named.items()}


def read_hub(dataset: str, config: str | None = None) -> dict[str, list[dict]]:
    """Records by split from the Hugging Face hub (needs network, or a warm `datasets` cache)."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a project dependency
        raise ValueError(f"loading {dataset!r} from the hub needs the `datasets` package; or pass path=") from None
    try:
        loaded = datasets.load_dataset(dataset, config) if config else datasets.load_dataset(dataset)
    except Exception as e:  # offline, renamed, gated: the user's to fix, so say how
        raise ValueError(f"could not load {dataset!r} from the hub ({type(e).__name__}: {str(e)[:ERROR_CHARS]}); "
                         f"pass path= a local copy") from None
    return {name: [dict(row) for row in split] for name, split in loaded.items()}


def require(record: dict, fields: Iterable[str], where: str) -> None:
    missing = [f for f in fields if f not in record]
    if missing:
        raise ValueError(f"{where}: record has no {', '.join(map(repr, missing))} field (keys: {sorted(record)})")


# ---------------------------------------------------------------------------------------- splitting

def check_percent(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise ValueError(f"{name} must be an integer in 0..100, got {value!r}")
    return value


class DatasetEnvironment(Environment):
    """Problems from a data set, split as the module docstring says; sampling is seeded and distinct.

    `problems_by_split` holds (problem, key) pairs per source split; `key` is the text hashed for
    the split (the question, not the id, so re-ordered or duplicated records keep their split).
    """

    def __init__(self, name: str, verifier: str, problems_by_split: dict[str, list[tuple[Problem, str]]],
                 eval_percent: int = 20, warm_start_percent: int = 10, verifier_args: dict | None = None,
                 answer_marker: str | None = None):
        super().__init__(name=name, verifier=verifier, verifier_args=dict(verifier_args or {}),
                         answer_marker=answer_marker)
        eval_percent = check_percent("eval_percent", eval_percent)
        warm_start_percent = check_percent("warm_start_percent", warm_start_percent)
        if eval_percent + warm_start_percent > 100:
            raise ValueError(f"eval_percent + warm_start_percent must be at most 100, got "
                             f"{eval_percent} + {warm_start_percent}")
        self.splits = self._split(problems_by_split, eval_percent, warm_start_percent)

    @staticmethod
    def _split(by_split, eval_percent, warm_percent) -> dict[str, list[Problem]]:
        splits: dict[str, list[Problem]] = {"eval": [], "warm_start": [], "train": []}
        if "test" in by_split and len(by_split) > 1:
            eval_pairs = by_split["test"]
            rest = [pair for name, pairs in by_split.items() if name != "test" for pair in pairs]
            eval_percent = 0  # the source's own test split is the eval set
        else:
            eval_pairs, rest = [], [pair for pairs in by_split.values() for pair in pairs]
        eval_keys = {" ".join(key.split()) for _, key in eval_pairs}
        splits["eval"] = [p for p, _ in eval_pairs]
        for problem, key in rest:
            b = bucket(key)
            if b < eval_percent:
                splits["eval"].append(problem)
                eval_keys.add(" ".join(key.split()))
            elif " ".join(key.split()) in eval_keys:
                continue  # a duplicate of a held-out question is never trained on
            else:
                splits["warm_start" if b < eval_percent + warm_percent else "train"].append(problem)
        seen: set[str] = set()
        for name, problems in splits.items():  # ids must be unique across all splits
            dupes = [p.id for p in problems if p.id in seen or seen.add(p.id)]
            if dupes:
                raise ValueError(f"problem ids repeat: {dupes[:SHOWN]}; ids must be unique in the data set")
        return splits

    def _pick(self, split: str, n: int, seed: int | None) -> list[Problem]:
        pool = self.splits[split]
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise EnvError(f"env {self.name!r}: n must be a non-negative integer, got {n!r}")
        if n > len(pool):
            raise EnvError(f"env {self.name!r}: the {split} split holds {len(pool)} problems, asked for {n}; "
                           f"ask for fewer, use a bigger data file, or change eval_percent / warm_start_percent")
        return pool[:n] if seed is None else random.Random(f"{split}:{seed}").sample(pool, n)

    def split_size(self, split: str) -> int | None:
        return len(self.splits[split])

    def train_problems(self, n: int, seed: int) -> list[Problem]:
        return self._pick("train", n, seed)

    def warm_start_problems(self, n: int, seed: int) -> list[Problem]:
        return self._pick("warm_start", n, seed)

    def eval_problems(self, n: int) -> list[Problem]:
        return self._pick("eval", n, None)


def load_records(path: str | None, hub: tuple[str, str | None]) -> dict[str, list[dict]]:
    """Local records when `path` is given, else the hub data set `hub = (name, config)`."""
    return read_local(path) if path is not None else read_hub(*hub)


def build(records: dict[str, list[dict]], to_problem: Callable[[dict, str, int], tuple[Problem, str]]
          ) -> dict[str, list[tuple[Problem, str]]]:
    """Apply `to_problem(record, split, index)` to every record, keeping the source splits."""
    return {split: [to_problem(r, split, i) for i, r in enumerate(rs)] for split, rs in records.items()}
