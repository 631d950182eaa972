"""Atomic checkpoints: a crash or kill at any moment leaves the last complete one loadable.

Checkpoints are read with `torch.load(weights_only=True)`: tensors, dicts, lists, tuples,
numbers, strings and None, nothing that runs code while unpickling. A `.pt` someone placed in
a run directory is refused, not executed, on `resume=<dir>`, `resume=latest` and sweep relaunches.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from pathlib import Path

import torch

from promptrl.errors import UserError
from promptrl.faults import crash_point
from promptrl.rundir import fsync_dir

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
        fsync_dir(directory)  # ... and durable once the directory entry is on disk
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):  # disk full, permissions: the previous checkpoint is intact
            kept = sorted(p.name for p in directory.glob("ckpt-*.pt"))
            raise UserError(f"cannot write checkpoint {path} ({e.strerror or e}); the last saved is "
                            f"{kept[-1] if kept else 'none'}; free disk space and resume, or set checkpoint_every=0") from e
        raise
    # Rotation only ever deletes checkpoints older than the one just written: a newer file is
    # not this process's to delete (and deleting by name would remove each new checkpoint
    # whenever an unreadable one with a higher step number lay there).
    older = [p for p in checkpoints(directory) if p.name < path.name]
    for old in older[:max(len(older) - (KEEP - 1), 0)]:
        old.unlink(missing_ok=True)
    return path


def checkpoints(directory: Path) -> list[Path]:
    """The checkpoint files, oldest first (the zero-padded step orders the names)."""
    return sorted(directory.glob("ckpt-*.pt"))


def load_latest_checkpoint(directory: Path) -> dict | None:
    """The newest checkpoint that loads (a corrupt one is reported and skipped); None when there
    is none at all. When there are checkpoints and none loads, a UserError: the caller must not
    start over in a directory whose work it cannot read (it would overwrite its metrics), and
    nothing is moved or deleted, so the files stay for a person to look at."""
    found = checkpoints(directory)
    problems = []
    for path in reversed(found):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated, corrupt, or holding objects that are not plain data
            reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            log.warning("checkpoint %s is unreadable (%s); trying the previous one", path.name, reason)
            problems.append(f"{path.name}: {type(e).__name__}")
            continue
        for newer in found[found.index(path) + 1:]:  # unreadable, and newer than the run now resumes from
            aside = newer.with_name(newer.name + ".unreadable")
            os.replace(newer, aside)
            log.warning("%s set aside as %s: the run continues from %s", newer.name, aside.name, path.name)
        log.info("resuming from %s", path)
        return state
    if found:
        raise UserError(f"none of the {len(found)} checkpoints in {directory} can be loaded ({'; '.join(problems[:3])}); "
                        "nothing was changed; they may be damaged or not promptrl checkpoints (only plain tensors and "
                        "data are loaded, never pickled code); resume from a copy or start a new run directory")
    return None
