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
    ("tree_id", pa.string()), ("branch_path", pa.string()), ("node_value", pa.float64()),
    ("num_tokens", pa.int64()), ("seed", pa.int64()), ("step", pa.int64()),
])


class DataStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.rows_written = 0

    def write(self, step: int, rows: list[dict]) -> Path | None:
        if any(r["verdict"] != "pass" for r in rows):
            raise ValueError("DataStore only takes verified (pass) samples")
        if not rows:
            return None
        path = self.root / f"step-{step:06d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path)
        self.rows_written += len(rows)
        return path
