"""Run records: the run directory, metrics JSONL, wandb, rich output and results.json."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys
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
SOURCE_ROOT = Path(__file__).resolve().parents[1]
CODE_PATHS = ("promptrl", "conf")  # a checkout's outputs/ and docs/ change under a study; its code must not
SECRET_KEY = re.compile(r"(^|_)(token|secret|password|passwd|api_?key|auth)$", re.IGNORECASE)


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


def source_commit(root: Path = SOURCE_ROOT) -> str | None:
    """The git commit of the promptrl source this process runs, with "+dirty" when its tracked code
    differs from it; None for an installed wheel, whose package versions say what ran."""
    if not ((root / ".git").exists() and (root / "pyproject.toml").is_file()):
        return None
    git = ["git", "-C", str(root)]
    try:
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
        changed = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS],
                                 capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if changed.stdout.strip() else "")


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
    write_json(directory / "versions.json", {**package_versions(), "promptrl_commit": source_commit()})


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title)
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*[f"{v:.4f}" if isinstance(v, float) else str(v) for v in r])
    # piped output (logs, CI, tests) has no width to fit: keep wide tables whole rather than fold every cell
    Console(width=None if sys.stdout.isatty() else 200).print(table)


class Tracker:
    """Metrics rows to <run_dir>/metrics.jsonl (one JSON object per line, each with `step`),
    mirrored to wandb when enabled. On resume the file is cut back to the checkpoint's step so
    no row is duplicated or lost."""

    def __init__(self, directory: Path, logger_cfg, config: dict | None = None, resume_step: int | None = None,
                 identity: dict | None = None):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            kept = [l for l in self.path.read_text().splitlines() if l.strip() and _row_step(l) is not None and _row_step(l) <= resume_step]
            atomic_write_text(self.path, "".join(l + "\n" for l in kept))
        elif resume_step is None:
            self.path.unlink(missing_ok=True)
        self.wandb = None
        if logger_cfg.wandb:
            self.wandb = _init_wandb(directory, logger_cfg, config or {}, identity or {})

    def log(self, row: dict) -> None:
        row = _jsonable(row)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}, step=row["step"])

    def summary(self, results: dict) -> None:
        if self.wandb is not None:
            self.wandb.summary.update({k: v for k, v in _jsonable(results).items() if isinstance(v, (int, float, str))})

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def _row_step(line: str) -> int | None:
    try:
        return json.loads(line).get("step")
    except json.JSONDecodeError:  # a half-written last line from a kill
        return None


def wandb_identity(config: dict) -> dict:
    """Name, group and tags that line runs up in the wandb UI: a sweep's jobs share a group (the
    sweep directory) and are named by their overrides; tags are task/algo/agent/target."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    get = lambda *keys: next((str(config[k]["name"]) for k in keys if isinstance(config.get(k), dict) and "name" in config[k]), None)
    tags = [t for t in (get("task"), get("algo"), get("agent") and f"agent={get('agent')}", get("target") and f"target={get('target')}") if t]
    identity = {"tags": tags}
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            identity["group"] = str(hc.sweep.dir)
            identity["name"] = hc.job.override_dirname or f"job{hc.job.num}"
    return identity


def _init_wandb(directory: Path, cfg, config: dict, identity: dict):
    import wandb

    kwargs = dict(project=cfg.project, entity=cfg.entity, group=cfg.group or identity.get("group"),
                  tags=list(cfg.tags) or identity.get("tags") or None, dir=str(directory), config=redact(config),
                  name=identity.get("name", directory.name), resume="allow",
                  id=re.sub(r"[^A-Za-z0-9_-]", "-", str(directory.resolve()))[-64:])
    try:
        return wandb.init(mode=cfg.mode, **kwargs)
    except Exception as e:  # unreachable server, bad key: keep the run, log offline
        log.warning("wandb init failed (%s); logging offline in %s", str(e).splitlines()[0][:200], directory)
        wandb.teardown()  # the failed attempt still holds the run id in wandb's service process
        return wandb.init(mode="offline", **kwargs)
