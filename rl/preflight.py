"""Preflight: every check of the user's input that can fail, done before Ray starts, each a one-line ConfigError
(exit 2) within seconds. `run`, `train --from-data` and `run --resume` all pass through here.

    training_data  `inputs`, and a stored data set `train --from-data` can read
    resumable  a run dir `--resume` can continue, and `inputs` for its config
    inputs   the output dir, the env (loaded with its kwargs), model.path, wandb if asked for, the Ray address,
             GPUs on this machine
    lengths  a tiny model's prompts + completions fit model.tiny.max_position (needs the tokenizer)

model.path is a local HF directory or a hub id; a hub id that is not in the local cache needs the hub, which is
probed once with a short timeout (an offline machine would otherwise spend a minute in retries). When the hub
is unreachable but the model is cached, HF_HUB_OFFLINE=1 is set for this process and the Ray workers it starts.
Deliberately not here: checks that need the cluster's resources (`launch.check_cluster`) or a model's weights.
Imports neither torch nor ray, except Ray's GCS client to ask a cluster address that answers on gRPC whether it
is a Ray cluster (nothing starts).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlparse

from .config import Config, ConfigError

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
PROBE_TIMEOUT_S = 3.0
RAY_CLIENT_PORT, RAY_GCS_PORT = 10001, 6379


def inputs(cfg: Config, out: Path | None):
    """The cheap checks, in the order a user fixes them; returns the loaded env. out None: a resume (its dir
    exists and is not empty by design)."""
    from branchrl.envs import load_env

    if out is not None:
        output_dir(out)
    env = load_env(cfg.env.name, **cfg.env.kwargs)
    model_source(cfg.model.path)
    if cfg.track.wandb and importlib.util.find_spec("wandb") is None:
        raise ConfigError("track.wandb=true but wandb is not installed; `pip install wandb`, or track.wandb=false "
                          "(TensorBoard files are written either way)")
    address = ray_address(cfg.run.ray_address)
    if not address:
        local_gpus(cfg)
    return env


def training_data(cfg: Config, out: Path, source: Path) -> Path:
    """`train --from-data`: `inputs`, and the stored data set's folder (a run dir or its data/, with shards)."""
    from branchrl.data.datastore import find_data_dir

    inputs(cfg, out)
    return find_data_dir(source)


def resumable(run_dir: Path, overrides: list[str], address: str | None = None, verbose: bool = False):
    """`run --resume`: the overrides only reshape the training group, the run dir has a step checkpoint, and
    the resumed config (its model the checkpoint) passes `inputs`. Returns (config, resume point, env)."""
    from . import checkpoints
    from .config import load_config

    checkpoints.check_reshape(overrides)
    point = checkpoints.resume_point(run_dir)
    cfg = load_config(run_dir / "config.yaml", overrides)
    cfg.model.path = str(point.checkpoint)  # weights, Adam moments and tokenizer as they were at the checkpoint
    if address:
        cfg.run.ray_address = address
    cfg.run.verbose = cfg.run.verbose or verbose
    return cfg, point, inputs(cfg, None)


def output_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output dir {out} is a file; pass another --out")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"output dir {out} is not empty; pass another --out")


def model_source(path: str | None) -> None:
    """A local HF directory (config.json inside), or a hub id that is cached or reachable."""
    if path is None:
        return
    local = Path(path).expanduser()
    if local.exists():
        if not local.is_dir() or not (local / "config.json").is_file():
            raise ConfigError(f"model.path {path} is not an HF model directory (no config.json); pass the folder "
                              f"that holds config.json, the weights and the tokenizer")
        return
    if path.startswith(("/", ".", "~")) or not HUB_ID.fullmatch(path):
        raise ConfigError(f"model.path {path} does not exist; pass a local HF model directory or a hub id such as "
                          f"Qwen/Qwen2.5-0.5B-Instruct")
    why = hub_unreachable()
    if why is None:
        return
    os.environ["HF_HUB_OFFLINE"] = "1"   # cached or not, nothing may retry against an unreachable hub
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(path, "config.json"), str):
        return
    raise ConfigError(f"model.path {path} is not a local directory and not in the Hugging Face cache, and {why}; "
                      f"download it where there is network (`hf download {path} --local-dir DIR`) and pass "
                      f"model.path=DIR")


def hub_unreachable() -> str | None:
    """Why the hub cannot be used (offline mode, or no TCP connection within PROBE_TIMEOUT_S), or None."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var} is set"
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as e:
        return f"the hub ({host}:{port}) is unreachable ({type(e).__name__})"
    return None


def ray_address(address: str | None) -> str | None:
    """The cluster address the run joins (None: an embedded Ray), checked to be a Ray cluster: it accepts a TCP
    connection and speaks HTTP/2 (gRPC) within PROBE_TIMEOUT_S each, and a GCS answers a request (Ray's own client
    would otherwise retry for about 40 s)."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address in (None, "local"):
        return None
    given = address
    if address == "auto":
        address = _current_cluster()
    scheme, _, rest = address.rpartition("://")
    host, _, port = rest.partition(":")
    port = int(port) if port.isdigit() else (RAY_CLIENT_PORT if scheme == "ray" else RAY_GCS_PORT)
    why = _no_grpc(host, port) or (None if scheme == "ray" else _no_gcs(f"{host}:{port}"))
    if why:
        raise ConfigError(f"no Ray cluster answers at {address} (ray_address={given}: {why}); start it with "
                          f"`ray start --head`, fix the address, or leave it out for an embedded Ray")
    return address


def _no_grpc(host: str, port: int) -> str | None:
    """Why host:port is not a gRPC server (no TCP connection, or no HTTP/2 SETTINGS frame back), or None."""
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S) as conn:
            conn.settimeout(PROBE_TIMEOUT_S)
            conn.sendall(preface)
            head = conn.recv(9)
    except OSError as e:
        return type(e).__name__
    return None if len(head) == 9 and head[3] == 0x04 else "not a gRPC server"


def _no_gcs(address: str) -> str | None:
    """Why the gRPC server at address is not a Ray GCS (one request, PROBE_TIMEOUT_S), or None."""
    from ray._raylet import GcsClient  # ray is imported, not started

    stderr, quiet = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 2)   # the GCS client's C++ log lines would break the one-line error
    try:
        GcsClient(address=address).internal_kv_keys(b"", None, timeout=PROBE_TIMEOUT_S)
    except Exception as e:  # noqa: BLE001 - any failure to answer means: not a usable GCS
        return f"not a Ray GCS: {' '.join(str(e).split())[:120]}"
    finally:
        os.dup2(stderr, 2)
        os.close(stderr)
        os.close(quiet)
    return None


def _current_cluster() -> str:
    """The address `ray start` on this machine left behind (what ray.init(address='auto') reads)."""
    temp = Path(os.environ.get("RAY_TMPDIR") or "/tmp") / "ray" / "ray_current_cluster"
    found = temp.read_text().strip() if temp.is_file() else ""
    if not found:
        raise ConfigError("ray_address=auto but no Ray cluster was started on this machine; start one with "
                          "`ray start --head`, pass its address, or leave ray_address out for an embedded Ray")
    return found


def local_gpus(cfg: Config) -> None:
    """An embedded Ray has this machine's GPUs only: GPUs asked for must be there."""
    want = cfg.train.gpus * cfg.train.workers + cfg.rollout.gpus_per_worker * cfg.rollout.workers
    if want <= 0:
        return
    have = visible_gpus()
    if want > have:
        raise ConfigError(f"the config asks for {want:g} GPUs (train.gpus x train.workers + rollout.gpus_per_worker "
                          f"x rollout.workers) but this machine has {have}; set train.gpus=0 and "
                          f"rollout.gpus_per_worker=0 for CPU, or join a GPU cluster with --address")


def visible_gpus() -> int:
    """NVIDIA GPUs this process may use: the driver's device list (/proc/driver/nvidia/gpus, else `nvidia-smi -L`),
    capped by CUDA_VISIBLE_DEVICES when set."""
    listed = Path("/proc/driver/nvidia/gpus")
    count = len(list(listed.iterdir())) if listed.is_dir() else _smi_gpus()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        count = min(count, len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"]))
    return count


def _smi_gpus() -> int:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(line.startswith("GPU ") for line in listed.splitlines())


def lengths(cfg: Config, tokenizer, prompts: list[str], worked: list[str]) -> None:
    """A tiny model's position limit holds the longest prompt plus max_new_tokens, and every warm-start text
    (prompt + worked solution + EOS). A checkpoint's own limit is its business."""
    limit = cfg.model.tiny.max_position if cfg.model.path is None else None
    if limit is None:
        return
    longest = max(len(tokenizer.encode(p)) for p in prompts)
    if longest + cfg.rollout.max_new_tokens > limit:
        raise ConfigError(f"rollout.max_new_tokens={cfg.rollout.max_new_tokens} plus the longest prompt ({longest} "
                          f"tokens) exceeds model.tiny.max_position={limit}")
    longest_worked = max((len(tokenizer.encode(text)) + 1 for text in worked), default=0)
    if longest_worked > limit:
        raise ConfigError(f"a warm-start example is {longest_worked} tokens, over model.tiny.max_position={limit}")
