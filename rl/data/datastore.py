"""The synthetic data set: verified samples as parquet shards with provenance, one shard per step, crash-safe.

`datasets.load_dataset("parquet", data_dir=RUN/data)` loads the shards. Only samples whose verdict
is pass are written; every row says which env, problem, policy version, verifier (and its
version), tree and branch produced it, and carries a run-unique `sample_id`. Nothing here decides
what is verified.

On disk (RUN/data and the manifest beside it, because `load_dataset` reads every visible file in
data/ as parquet and fails on a JSON one):

    RUN/data/step-000006.parquet       step 6, first attempt
    RUN/data/step-000006-a1.parquet    step 6 again, written by attempt 1 (a resumed run)
    RUN/data_manifest.json             {"format", "shards": [{file, step, attempt, rows, bytes, sha256}]}

A shard is written to a hidden temp file, fsynced and renamed into place; then the manifest is
replaced the same way. So a crash leaves at most a temp file (removed when the store reopens) or a
complete shard the manifest does not list yet (checked and adopted when the store reopens). A shard
whose bytes differ from the manifest, a listed shard that is gone, or a foreign file in data/ is a
`DataSetError`: verified samples are never dropped or overwritten silently. One writer per data dir.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema([
    ("sample_id", pa.string()),
    ("env", pa.string()), ("problem_id", pa.string()), ("prompt", pa.string()), ("completion", pa.string()),
    ("answer", pa.string()), ("policy_version", pa.int64()), ("verifier", pa.string()),
    ("verifier_version", pa.string()), ("verdict", pa.string()), ("score", pa.float64()),
    ("tree_id", pa.string()), ("branch_path", pa.string()), ("tree_value", pa.float64()),
    ("num_tokens", pa.int64()), ("seed", pa.int64()), ("step", pa.int64()), ("attempt", pa.int64()),
    # multi-turn transcripts: the completion's turns as character spans, and how many tool outputs it holds
    ("roles", pa.list_(pa.struct([("role", pa.string()), ("start", pa.int64()), ("end", pa.int64())]))),
    ("tool_calls", pa.int64()),
])
COLUMNS = set(SCHEMA.names)
MANIFEST_FORMAT = "branchrl-data/1"
SHARD_NAME = re.compile(r"step-(\d{6,})(?:-a([1-9]\d*))?\.parquet")


class DataSetError(ValueError):
    """The files of a data dir are not a consistent data set; the message names the file and what to do."""


def sample_id(tree_id: str, branch_path: str, attempt: int) -> str:
    """`<tree_id>/<branch_path>`, with `@a<k>` after the tree id for attempt k >= 1. Tree ids are unique in a
    run's step and name the step; the branch path names the leaf; a re-run of a step (a later attempt)
    samples trees of the same ids, so the attempt keeps its samples apart."""
    return f"{tree_id}{f'@a{attempt}' if attempt else ''}/{branch_path}"


def shard_name(step: int, attempt: int) -> str:
    return f"step-{step:06d}{f'-a{attempt}' if attempt else ''}.parquet"


def manifest_path(root: Path) -> Path:
    """Beside the data dir, not in it: RUN/data -> RUN/data_manifest.json."""
    return root.parent / f"{root.name}_manifest.json"


class DataStore:
    """Writes a run's shards; opening a dir that already holds some checks them all and adopts a complete
    shard a crash left out of the manifest. `ids` and `rows` cover everything stored,
    including what earlier attempts wrote."""

    def __init__(self, root: Path, attempt: int = 0):
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, got {attempt}")
        self.root, self.attempt = Path(root), attempt
        self.manifest = manifest_path(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_temp_files()
        self.shards: list[dict] = _read_manifest(self.manifest)
        self.ids: set[str] = set()
        for entry in self.shards:
            self._add_ids(entry["file"], _verified_table(self.root, entry).column("sample_id").to_pylist())
        listed = {entry["file"] for entry in self.shards}
        unlisted = [p for p in _visible(self.root) if p.name not in listed]
        for path in unlisted:
            self._adopt(path)
        if unlisted:
            self._write_manifest()
        self.rows = sum(entry["rows"] for entry in self.shards)

    def write(self, step: int, rows: list[dict]) -> Path | None:
        """One shard for the step's rows, then the manifest; None (no file) when there are none."""
        _check_rows(rows, step, self.attempt)
        ids = Counter(row["sample_id"] for row in rows)
        repeated = sorted(i for i, n in ids.items() if n > 1 or i in self.ids)
        if repeated:
            raise ValueError(f"DataStore: sample ids already stored (or repeated in this batch): {repeated[:3]}"
                             f"{' ...' if len(repeated) > 3 else ''}; a step's samples must be stored once")
        if not rows:
            return None
        path = self.root / shard_name(step, self.attempt)
        if path.exists():  # a second write for one step would silently replace the first shard
            raise FileExistsError(f"{path} already written; a re-run of step {step} needs a new attempt")
        data = _to_parquet(pa.Table.from_pylist(rows, schema=SCHEMA))
        write_atomically(path, data)
        self.shards.append(_entry(path.name, step, self.attempt, len(rows), data))
        self._write_manifest()
        self.ids.update(ids)
        self.rows += len(rows)
        return path

    def _remove_temp_files(self) -> None:
        """Only our own temp names: a write that died before its rename left nothing else."""
        for path in [*self.root.glob(".step-*.parquet.tmp"), self.manifest.with_name(f".{self.manifest.name}.tmp")]:
            if path.is_file():
                path.unlink()

    def _adopt(self, path: Path) -> None:
        """A shard under its final name is complete (it was fsynced before the rename); it must still be ours."""
        m = SHARD_NAME.fullmatch(path.name)
        if m is None:
            raise DataSetError(f"{path} is not a data shard (step-NNNNNN[-aK].parquet) and would break "
                               f"load_dataset on {self.root}; move it out of the data dir")
        step, attempt = int(m[1]), int(m[2] or 0)
        data = path.read_bytes()
        table = _parse(path, data, "is not in the manifest and")
        if not table.schema.equals(SCHEMA):
            raise DataSetError(f"{path} is not in the manifest and its columns differ from this version's schema; "
                               f"move it out of the data dir")
        try:
            _check_rows(table.to_pylist(), step, attempt)
        except ValueError as e:
            raise DataSetError(f"{path} is not in the manifest and does not fit its name: {e}") from None
        self._add_ids(path.name, table.column("sample_id").to_pylist())
        self.shards.append(_entry(path.name, step, attempt, table.num_rows, data))

    def _add_ids(self, name: str, ids: list[str]) -> None:
        fresh = set(ids)
        if len(fresh) != len(ids) or fresh & self.ids:
            raise DataSetError(f"{self.root / name} repeats sample ids stored in it or in another shard; "
                               f"the data dir holds a step twice")
        self.ids |= fresh

    def _write_manifest(self) -> None:
        shards = sorted(self.shards, key=lambda e: (e["step"], e["attempt"]))
        text = json.dumps({"format": MANIFEST_FORMAT, "shards": shards}, indent=1) + "\n"
        write_atomically(self.manifest, text.encode())


def find_data_dir(path: Path) -> Path:
    """A run dir (its data/) or a data dir itself, holding at least one shard; else a DataSetError saying so."""
    path = Path(path)
    if not path.is_dir():
        raise DataSetError(f"data dir {path} {'is not a directory' if path.exists() else 'not found'}; "
                           f"pass a run directory or its data/ directory")
    root = path / "data" if (path / "data").is_dir() else path
    if not _visible(root, "*.parquet") and not manifest_path(root).exists():  # listed but gone: read_data_set says so
        raise DataSetError(f"{root} holds no parquet shards (no verified samples); "
                           f"pass a run directory or its data/ directory")
    return root


def read_data_set(path: Path, columns: list[str], optional: tuple[str, ...] = ()) -> pa.Table:
    """The given columns of every shard under path (see find_data_dir), read-only, then the optional ones: columns
    that shards written before they were added lack, read as nulls there (e.g. `roles`). Shards the manifest lists
    must match it byte for byte; unlisted ones (a crash before the manifest update, or a data set copied
    without its manifest) are read as they are."""
    root = find_data_dir(path)
    listed = {entry["file"]: entry for entry in _read_manifest(manifest_path(root))}
    tables = []
    for name in sorted({*listed, *(p.name for p in _visible(root, "*.parquet"))}):
        shard = root / name
        table = _verified_table(root, listed[name]) if name in listed else _parse(shard, shard.read_bytes(), "is")
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise DataSetError(f"{shard} has no column(s) {missing}; it is not a branchrl data set shard")
        for name in optional:
            if name not in table.column_names:
                table = table.append_column(SCHEMA.field(name), pa.nulls(table.num_rows, SCHEMA.field(name).type))
        tables.append(table.select([*columns, *optional]))
    table = pa.concat_tables(tables)
    if table.num_rows == 0:
        raise DataSetError(f"{root} holds no rows (no verified samples)")
    return table


def _check_rows(rows: list[dict], step: int, attempt: int) -> None:
    for row in rows:
        # pyarrow would drop unknown keys and null missing ones: a renamed field must fail here instead
        if set(row) != COLUMNS:
            raise ValueError(f"DataStore row columns differ from the schema: missing {sorted(COLUMNS - set(row))}, "
                             f"unknown {sorted(set(row) - COLUMNS)}")
        if row["verdict"] != "pass":
            raise ValueError(f"DataStore only takes verified (pass) samples, got verdict {row['verdict']!r}")
        if (row["step"], row["attempt"]) != (step, attempt):
            raise ValueError(f"DataStore: a row of step {row['step']} attempt {row['attempt']} in the shard of "
                             f"step {step} attempt {attempt}")


def _read_manifest(path: Path) -> list[dict]:
    if not path.exists():
        return []
    try:
        manifest = json.loads(path.read_text())
        if manifest["format"] != MANIFEST_FORMAT:
            raise ValueError(f"format {manifest['format']!r}")
        return list(manifest["shards"])
    except (ValueError, KeyError, TypeError) as e:
        raise DataSetError(f"{path} is not a {MANIFEST_FORMAT} manifest ({type(e).__name__}: {e}); "
                           f"restore it, or move it away to rebuild it from the shards") from None


def _verified_table(root: Path, entry: dict) -> pa.Table:
    path = root / entry["file"]
    if not path.is_file():
        raise DataSetError(f"{path} is listed in {manifest_path(root).name} but missing: its verified samples "
                           f"are lost unless you restore the file")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if (len(data), digest) != (entry["bytes"], entry["sha256"]):
        raise DataSetError(f"{path} does not match {manifest_path(root).name} ({len(data)} bytes, sha256 "
                           f"{digest[:12]}; listed {entry['bytes']} bytes, {entry['sha256'][:12]}): the file "
                           f"changed after it was written; restore it from a copy")
    return _parse(path, data, "matches the manifest but")


def _parse(path: Path, data: bytes, what: str) -> pa.Table:
    try:
        return pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as e:
        raise DataSetError(f"{path} {what} is not a readable parquet file ({e}); move it out of the data dir") from None


def _visible(root: Path, pattern: str = "*") -> list[Path]:
    """What load_dataset reads: every entry but hidden ones (it does read '_name' files)."""
    return sorted(p for p in root.glob(pattern) if not p.name.startswith("."))


def _entry(name: str, step: int, attempt: int, rows: int, data: bytes) -> dict:
    return {"file": name, "step": step, "attempt": attempt, "rows": rows, "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


def _to_parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def write_atomically(path: Path, data: bytes) -> None:
    """Hidden temp file in the same dir, fsync, rename over the final name, fsync the dir: after a crash the
    final name holds either the old bytes or all the new ones."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
