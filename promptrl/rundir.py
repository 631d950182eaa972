"""A run directory's lifecycle: the one home of a run, from launch to its last file.

Everything that decides what may happen to a run directory lives here:

- **atomic files**: a reader (or a crash) sees the old file or the new one, never half; the
  directory is fsynced after the rename so the rename itself survives a power cut;
- **the lock**: one process at a time writes a run directory (a relaunched sweep whose first
  SLURM array still runs, two `resume=latest`); the second exits with one line naming the holder;
- **the launch decision**: new, resume (asked for, or a relaunched sweep job that finds its
  checkpoints) or finished, after comparing the saved config with the current one;
- **secrets**: a literal credential on the command line is refused before Hydra writes it to
  `.hydra/`, the run directory's name or wandb; anything saved is redacted; on resume the
  credentials come from the current environment, never from the (redacted) saved config.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import re
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from promptrl.errors import UserError

log = logging.getLogger(__name__)

REDACTED = "<redacted>"
# Keys whose values are credentials: api_key, hf_token, aws_secret_access_key, db_password, ...
SECRET_KEY = re.compile(
    r"(^|_)(token|secret|password|passwd|api_?key|access_?key|secret_?key|private_?key|auth|authorization|"
    r"credentials?|bearer)$", re.IGNORECASE)
# user:password@ in a URL (http://user:pass@host, postgres://u:p@db)
URL_CREDENTIALS = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@'\"]+@")
LOCK_FILE = ".promptrl.lock"


# --- atomic files --------------------------------------------------------------------------------
def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable: without it a power cut can undo the rename."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)


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
    fsync_dir(path.parent)


def jsonable(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if hasattr(x, "item"):
        return jsonable(x.item())
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    return x


def write_json(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(jsonable(obj), indent=2) + "\n")


def run_dir() -> Path:
    """The Hydra run directory: the single home of a run's outputs."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


# --- secrets -------------------------------------------------------------------------------------
def is_secret_key(key: Any) -> bool:
    return bool(SECRET_KEY.search(str(key)))


def redact_text(text: str) -> str:
    """The text with the credentials inside URLs replaced."""
    return URL_CREDENTIALS.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)


def redact(obj: Any, keep_interpolations: bool = False) -> Any:
    """A copy without credentials: values of credential keys and user:password@ in URLs.
    `keep_interpolations`: an unresolved `${oc.env:VAR}` names a variable, not a secret: kept."""
    if isinstance(obj, dict):
        return {k: (REDACTED if is_secret_key(k) and v is not None and not (keep_interpolations and _is_interpolation(v))
                    else redact(v, keep_interpolations)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v, keep_interpolations) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj)
    return obj


def _is_interpolation(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("${") and value.endswith("}")


def secret_on_command_line(overrides: list[str]) -> str | None:
    """One line refusing a literal credential among the command-line overrides, or None.

    Hydra writes every override to `.hydra/overrides.yaml`, into sweep directory names and wandb
    run names before promptrl runs a line, so a literal secret cannot be kept out of those files
    afterwards: it is refused here, naming the environment as the way in."""
    for o in overrides:
        key, sep, value = o.partition("=")
        if not sep:
            continue
        key = key.lstrip("+~")
        value = value.strip().strip("'\"")
        if is_secret_key(key.rsplit(".", 1)[-1]) and value and value.lower() not in ("null", "none") \
                and not _is_interpolation(value):
            return (f"{key}=… on the command line would be saved in the run directory (.hydra/, its name, wandb); "
                    f"pass credentials through the environment: {key}='${{oc.env:YOUR_VARIABLE}}' "
                    "(the value is never printed)")
        if URL_CREDENTIALS.search(value):
            return (f"{key}=… holds a user:password@ URL, which would be saved in the run directory; "
                    f"give the URL without credentials and the key through the environment "
                    f"(e.g. target.server.api_key='${{oc.env:YOUR_VARIABLE}}')")
    return None


def restore_secrets(saved: Any, current: Any) -> Any:
    """The saved config with each redacted value taken from the current, unresolved config: on
    resume the credentials come from the environment now (an `${oc.env:...}` interpolation
    resolved when used), never the literal `<redacted>` the saved file holds."""
    if isinstance(saved, dict):
        cur = current if isinstance(current, dict) else {}
        return {k: (cur.get(k) if is_secret_key(k) and not isinstance(v, (dict, list)) else restore_secrets(v, cur.get(k)))
                for k, v in saved.items()}
    if isinstance(saved, list):
        return [restore_secrets(v, None) for v in saved]
    return saved


def scrub_hydra_files(directory: Path) -> None:
    """Hydra's own records (`.hydra/config.yaml`, `hydra.yaml`, `overrides.yaml`, and those of
    a resumed session) without credentials: a config file can hold a literal key that the
    command-line check never sees."""
    for hydra_dir in [directory / ".hydra", *(directory / ".hydra").glob("resume-*")]:
        for name in ("config.yaml", "hydra.yaml"):
            path = hydra_dir / name
            if path.is_file():
                config = OmegaConf.to_container(OmegaConf.load(path))
                clean = redact(config, keep_interpolations=True)
                if clean != config:
                    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(clean)))
        path = hydra_dir / "overrides.yaml"
        if path.is_file():
            overrides = OmegaConf.to_container(OmegaConf.load(path)) or []
            clean = [_redact_override(o) for o in overrides]
            if clean != overrides:
                atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(clean)))


def _redact_override(o: str) -> str:
    key, sep, value = o.partition("=")
    if sep and is_secret_key(key.lstrip("+~").rsplit(".", 1)[-1]) and not _is_interpolation(value):
        return f"{key}={REDACTED}"
    return redact_text(o)


# --- the lock ------------------------------------------------------------------------------------
class RunLock:
    """An exclusive lock on a run directory, held until `release` or the process ends (the kernel
    drops it then, so a killed run never leaves a stale lock). A second process exits with one
    line naming the holder's host and pid."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / LOCK_FILE
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "a process that has not said who it is"
            os.close(fd)
            raise UserError(f"{directory} is in use by another promptrl process ({holder}); wait for it to end or "
                            "stop it, then launch again") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"host {socket.gethostname()} pid {os.getpid()}\n".encode(), 0)
        self.fd: int | None = fd

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


# --- the launch decision -------------------------------------------------------------------------
# How a run is watched or reached, not what it computes: a relaunch may change these.
NOT_THE_RUNS_IDENTITY = (
    "resume", "logger",
    "target.server.url", "target.server.concurrency", "target.server.batch_size", "target.server.timeout_s",
    "target.server.max_retries", "target.server.backoff_s",
    "target.chat.max_concurrency", "target.chat.timeout_s", "target.chat.max_retries",
    "agent.chat.max_concurrency", "agent.chat.timeout_s", "agent.chat.max_retries",
)


def _drop(config: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    node = config
    for p in parents:
        node = node.get(p) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(last, None)


def run_identity(config: dict) -> dict:
    """The resolved, redacted config without the settings that do not change what a run computes."""
    config = redact(config)
    for key in NOT_THE_RUNS_IDENTITY:
        _drop(config, key)
    return config


def config_differences(saved: dict, current: dict, prefix: str = "", one_sided: list | None = None) -> list[str]:
    """The dotted keys at which two resolved configs differ. A key that only one of them has is
    a setting an earlier or later promptrl added or removed, not a different run (a study resumed
    across code versions would otherwise be refused for every new option): it goes to `one_sided`."""
    diffs = []
    for k in sorted(set(saved) | set(current)):
        if (k in saved) != (k in current):
            if one_sided is not None:
                one_sided.append(f"{prefix}{k}")
            continue
        a, b = saved[k], current[k]
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_differences(a, b, f"{prefix}{k}.", one_sided)
        elif a != b:
            diffs.append(f"{prefix}{k}")
    return diffs


def resolve_resume(resume: str, outputs: Path = Path("outputs")) -> Path:
    """`latest` is the newest run directory under outputs/ that holds a checkpoint."""
    if resume == "latest":
        runs = sorted((p.parent.parent for p in outputs.glob("**/checkpoints/ckpt-*.pt")), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise UserError(f"resume=latest: no run with a checkpoint under {outputs}/")
        return runs[-1]
    path = Path(resume).expanduser()
    if not (path / "checkpoints").is_dir():
        raise UserError(f"resume={resume!r} is not a run directory with checkpoints/; expected a path or 'latest'")
    return path


def earlier_launch(out: Path, cfg) -> str:
    """What an earlier launch of this job left in its run directory: "finished" (results.json),
    "interrupted" (checkpoints, no results: killed, or failed after a checkpoint) or "none".
    This is what makes a sweep resumable: launched again over the same hydra.sweep.dir, each job
    finds its own directory (hydra.sweep.subdir) and skips, resumes or starts. A directory whose
    work came from a different config is an error, not overwritten: the sweep's order changed."""
    has_results = (out / "results.json").is_file()
    has_checkpoints = any((out / "checkpoints").glob("ckpt-*.pt"))
    if (out / "failed.json").is_file():  # run it again; the record of the failure is kept aside
        os.replace(out / "failed.json", out / "failed-earlier.json")
    if not (has_results or has_checkpoints):
        return "none"
    saved_path = out / "config_resolved.yaml"
    if not saved_path.is_file():
        raise UserError(f"{out} holds results or checkpoints but no config_resolved.yaml; use a new run directory")
    saved = run_identity(OmegaConf.to_container(OmegaConf.load(saved_path)))
    current = run_identity(OmegaConf.to_container(cfg, resolve=True))
    one_sided: list[str] = []
    diffs = config_differences(saved, current, one_sided=one_sided)
    if one_sided:
        log.warning("%s was launched by a promptrl with other settings (%s only in one of the two configs); "
                    "treated as the same run", out, ", ".join(one_sided[:5]) + (" …" if len(one_sided) > 5 else ""))
    if diffs:
        shown = ", ".join(diffs[:5]) + (f" and {len(diffs) - 5} more" if len(diffs) > 5 else "")
        raise UserError(f"{out} holds a run of a different config (differs at {shown}); launch with the same "
                        "overrides in the same order, or with a new hydra.sweep.dir / hydra.run.dir")
    return "finished" if has_results else "interrupted"


def saved_config(out: Path, current: DictConfig) -> DictConfig:
    """The config a run was launched with (config_resolved.yaml), its credentials from the
    current config (the environment now), `resume` pointing at the run."""
    path = out / "config_resolved.yaml"
    if not path.is_file():
        raise UserError(f"{out} has no config_resolved.yaml; expected the directory of an earlier promptrl run")
    saved = OmegaConf.to_container(OmegaConf.load(path))
    restored = restore_secrets(saved, OmegaConf.to_container(current, resolve=False))
    cfg = OmegaConf.create(restored)
    OmegaConf.update(cfg, "resume", str(out), force_add=True)
    return cfg


def ignored_overrides() -> list[str]:
    """The command-line overrides a `resume=` launch does not apply (the run keeps its saved config)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    overrides = list(HydraConfig.get().overrides.task)
    return [o for o in overrides if not re.match(r"^[+~]*(resume|logger\b|hydra\b)", o)]


def save_run_info(directory: Path, cfg: DictConfig) -> None:
    from promptrl.tracking import package_versions, source_commit

    resolved = redact(OmegaConf.to_container(cfg, resolve=True))
    atomic_write_text(directory / "config_resolved.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved)))
    write_json(directory / "versions.json", {**package_versions(), "promptrl_commit": source_commit()})


@dataclass
class Launch:
    """What a command does with its run directory: `state` is new, resume or finished."""

    out: Path
    cfg: DictConfig
    state: str
    lock: RunLock


def open_run(cfg: DictConfig, out: Path | None = None, find_resume=resolve_resume) -> Launch:
    """Lock the run directory and decide: a new run (config saved), a resume (asked for with
    `resume=`, found by `find_resume`; or a relaunched job whose checkpoints are there) with the
    run's own saved config, or a finished one (skipped). The caller releases `launch.lock`."""
    if cfg.get("resume"):
        out = find_resume(str(cfg.resume))
    out = out if out is not None else run_dir()
    lock = RunLock(out)
    try:
        scrub_hydra_files(out)
        if cfg.get("resume"):
            ignored = ignored_overrides()
            if ignored:
                log.warning("resume=%s continues with the run's saved config; ignored: %s", cfg.resume, " ".join(ignored))
            return Launch(out, saved_config(out, cfg), "resume", lock)
        earlier = earlier_launch(out, cfg)
        if earlier == "finished":
            return Launch(out, cfg, "finished", lock)
        if earlier == "interrupted":
            log.info("%s holds this run's checkpoints from an earlier launch; resuming from them", out)
            return Launch(out, OmegaConf.merge(cfg, {"resume": str(out)}), "resume", lock)
        save_run_info(out, cfg)
        return Launch(out, cfg, "new", lock)
    except BaseException:
        lock.release()
        raise
