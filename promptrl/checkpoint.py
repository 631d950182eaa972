"""Atomic checkpoints: a crash or kill at any moment leaves the last complete one loadable."""

from __future__ import annotations

import io
import logging
import os
import tempfile
from pathlib import Path

import torch

from promptrl.errors import UserError
from promptrl.faults import crash_point

log = logging.getLogger(__name__)

KEEP = 2  # the newest and one before it, in case the newest is unreadable


def to_cpu(tree):
    """Every tensor of a nested state as a CPU copy: a checkpoint written on a GPU resumes on
    any device (the loader copies into the live model's tensors, which decide the device)."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu()
    if isinstance(tree, dict):
        return {k: to_cpu(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_cpu(v) for v in tree)
    return tree


def save_checkpoint(directory: Path, step: int, state: dict) -> Path:
    path = directory / f"ckpt-{step:07d}.pt"
    for stale in directory.glob(".ckpt-*.tmp"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)
    tmp = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".ckpt-", suffix=".tmp")
        buffer = io.BytesIO()
        torch.save(to_cpu(state), buffer)
        data = buffer.getbuffer()
        with os.fdopen(fd, "wb") as f:
            f.write(data[:len(data) // 2])
            crash_point("mid-checkpoint-write")  # a kill here leaves half a temp file, never a ckpt-*.pt
            f.write(data[len(data) // 2:])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # the rename is the commit point
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):  # disk full, permissions: the previous checkpoint is intact
            kept = sorted(p.name for p in directory.glob("ckpt-*.pt"))
            raise UserError(f"cannot write checkpoint {path} ({e.strerror or e}); the last saved is "
                            f"{kept[-1] if kept else 'none'}; free disk space and resume, or set checkpoint_every=0") from e
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
