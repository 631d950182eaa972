"""Atomic checkpoints: a crash or kill at any moment leaves the last complete one loadable."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

KEEP = 2  # the newest and one before it, in case the newest is unreadable


def save_checkpoint(directory: Path, step: int, state: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"ckpt-{step:07d}.pt"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".ckpt-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # the rename is the commit point
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for old in sorted(directory.glob("ckpt-*.pt"))[:-KEEP]:
        old.unlink(missing_ok=True)
    return path


def load_latest_checkpoint(directory: Path) -> dict | None:
    """The newest checkpoint that loads; a corrupt one is reported and skipped."""
    for path in sorted(directory.glob("ckpt-*.pt"), reverse=True):
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # truncated or corrupt file: fall back to the previous one
            log.warning("checkpoint %s is unreadable (%s); trying the previous one", path.name, type(e).__name__)
            continue
        log.info("resuming from %s", path)
        return state
    return None
