"""Run records: the run directory, metrics JSONL, wandb, rich output and results.json."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

log = logging.getLogger(__name__)
console = Console(stderr=True)

PACKAGES = ("promptrl", "torch", "transformers", "peft", "datasets", "hydra-core", "vllm", "wandb")
SECRET_KEY = re.compile(r"(token|secret|password|api_key|apikey)", re.IGNORECASE)


def run_dir() -> Path:
    """The Hydra run directory: the single home of a run's outputs."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same directory and rename: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if hasattr(x, "item"):
        return _jsonable(x.item())
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def write_json(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(_jsonable(obj), indent=2) + "\n")


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def redact(obj: Any) -> Any:
    """Drop values of keys that look like credentials before anything is saved."""
    if isinstance(obj, dict):
        return {k: ("<redacted>" if SECRET_KEY.search(str(k)) else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def save_run_info(directory: Path, cfg: DictConfig) -> None:
    resolved = redact(OmegaConf.to_container(cfg, resolve=True))
    atomic_write_text(directory / "config_resolved.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved)))
    write_json(directory / "versions.json", package_versions())


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title)
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*[f"{v:.4f}" if isinstance(v, float) else str(v) for v in r])
    Console().print(table)
