"""What the driver holds for one run: the config, the env, the tokenizer, the launched roles, the ledger,
the run directory and the console. The loop, the feed of rollout batches and `train --from-data` read it;
it owns no compute and starts nothing (`loop.launched` builds it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from branchrl.data.ledger import Ledger
from branchrl.envs import Environment

from .config import Config
from .launch import Roles
from .progress import Progress


@dataclass
class Context:
    cfg: Config
    env: Environment
    tokenizer: object          # a transformers tokenizer: text <-> ids, on the driver only
    roles: Roles
    ledger: Ledger
    run_dir: Path
    progress: Progress
    attempt: int = 0           # 0 for a fresh run, k for its k-th resume
