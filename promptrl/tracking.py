"""Run records: metrics JSONL, wandb, package versions and the code's commit, rich tables.
(The run directory itself — lock, atomic files, secrets — is promptrl/rundir.py.)"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from promptrl.rundir import atomic_write_text, jsonable, redact

log = logging.getLogger(__name__)
console = Console(stderr=True)

PACKAGES = ("promptrl", "torch", "transformers", "peft", "datasets", "hydra-core", "vllm", "wandb")
SOURCE_ROOT = Path(__file__).resolve().parents[1]
CODE_PATHS = ("promptrl", "conf")  # a checkout's outputs/ and docs/ change under a study; its code must not


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
        elif resume_step is None and self.path.exists():
            # a run started over (no checkpoint to resume): the earlier rows are kept aside, not deleted
            n = 1 + sum(1 for _ in directory.glob("metrics-earlier-*.jsonl"))
            os.replace(self.path, directory / f"metrics-earlier-{n}.jsonl")
            log.warning("%s held rows of an earlier start with no checkpoint; kept as metrics-earlier-%d.jsonl", self.path, n)
        self.wandb = None
        if logger_cfg.wandb:
            self.wandb = _init_wandb(directory, logger_cfg, config or {}, identity or {})

    def log(self, row: dict) -> None:
        row = jsonable(row)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}, step=row["step"])

    def summary(self, results: dict) -> None:
        if self.wandb is not None:
            self.wandb.summary.update({k: v for k, v in jsonable(results).items() if isinstance(v, (int, float, str))})

    def close_on_exit(self, kind, error, traceback) -> None:
        """An ExitStack exit callback: wandb's run ends failed (exit code 1) when the block raised,
        finished when it ended or stopped gracefully (Interrupted: it resumes later)."""
        from promptrl.interrupts import Interrupted

        self.close(exit_code=1 if kind is not None and not issubclass(kind, Interrupted) else 0)

    def close(self, exit_code: int = 0) -> None:
        """End the wandb run: exit_code 1 marks it failed in the UI (a crash, an error)."""
        if self.wandb is not None:
            self.wandb.finish(exit_code=exit_code)
            self.wandb = None


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


def wandb_run_id(directory: Path) -> str:
    """One wandb id per run directory, so a resumed run continues its wandb run: a hash of the
    whole path (its last characters alone are shared by e.g. .../sweep_a/3 and .../sweep_b/3)."""
    return hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:32]


def _init_wandb(directory: Path, cfg, config: dict, identity: dict):
    import wandb

    kwargs = dict(project=cfg.project, entity=cfg.entity, group=cfg.group or identity.get("group"),
                  tags=list(cfg.tags) or identity.get("tags") or None, dir=str(directory), config=redact(config),
                  name=identity.get("name", directory.name), resume="allow", id=wandb_run_id(directory))
    try:
        return wandb.init(mode=cfg.mode, **kwargs)
    except Exception as e:  # unreachable server, bad key: keep the run, log offline
        log.warning("wandb init failed (%s); logging offline in %s", str(e).splitlines()[0][:200], directory)
        wandb.teardown()  # the failed attempt still holds the run id in wandb's service process
        return wandb.init(mode="offline", **kwargs)
