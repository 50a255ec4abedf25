"""The synthetic data set: verified samples as parquet shards with provenance, one shard per step.

`datasets.load_dataset("parquet", data_dir=RUN/data)` loads the shards. Only samples whose verdict
is pass are written; every row says which env, problem, policy version, verifier (and its
version), tree and branch produced it. Nothing here decides what is verified.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema([
    ("env", pa.string()), ("problem_id", pa.string()), ("prompt", pa.string()), ("completion", pa.string()),
    ("answer", pa.string()), ("policy_version", pa.int64()), ("verifier", pa.string()),
    ("verifier_version", pa.string()), ("verdict", pa.string()), ("score", pa.float64()),
    ("tree_id", pa.string()), ("branch_path", pa.string()), ("tree_value", pa.float64()),
    ("num_tokens", pa.int64()), ("seed", pa.int64()), ("step", pa.int64()),
])
COLUMNS = set(SCHEMA.names)


class DataStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.rows_written = 0

    def write(self, step: int, rows: list[dict]) -> Path | None:
        """One shard for the step's rows; None (no file) when there are none."""
        for row in rows:
            # pyarrow would drop unknown keys and null missing ones: a renamed field must fail here instead
            if set(row) != COLUMNS:
                raise ValueError(f"DataStore row columns differ from the schema: missing {sorted(COLUMNS - set(row))}, "
                                 f"unknown {sorted(set(row) - COLUMNS)}")
            if row["verdict"] != "pass":
                raise ValueError(f"DataStore only takes verified (pass) samples, got verdict {row['verdict']!r}")
        if not rows:
            return None
        path = self.root / f"step-{step:06d}.parquet"
        if path.exists():  # a second write for one step would silently replace the first shard
            raise FileExistsError(f"{path} already written")
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path)
        self.rows_written += len(rows)
        return path
