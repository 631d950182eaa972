"""Read back what an offline wandb run recorded, without a server: the run's transaction log
(`run-<id>.wandb`, the file `wandb sync` uploads) holds every history row, summary update and
artifact manifest as protobuf `Record`s; tables are JSON files under the run's `files/media/table/`.

The log is LevelDB's log format behind a 7-byte wandb header: 32 KiB blocks of chunks, each
chunk a 7-byte header (CRC32C, length, type: 1 full, 2 first, 3 middle, 4 last) and its bytes.
wandb's own Python reader went with its Go core, so this is the few lines it takes.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7  # b":W&B" + magic (2 bytes) + version
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb transaction log"
    pos, parts = HEADER, []
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (FULL, FIRST):
            parts = [chunk]
        else:
            parts.append(chunk)
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(b"".join(parts))
            yield record


def offline_run(wandb_dir: Path) -> Path:
    runs = sorted(Path(wandb_dir).glob("offline-run-*"))
    assert len(runs) == 1, f"expected one offline run under {wandb_dir}, found {runs}"
    return runs[0]


def history(run_dir: Path) -> list[dict]:
    """Each history row as {key: value}, nested keys joined with '.'."""
    rows = []
    for r in records(next(run_dir.glob("run-*.wandb"))):
        if r.WhichOneof("record_type") == "history":
            rows.append({".".join(item.nested_key) or item.key: json.loads(item.value_json) for item in r.history.item})
    return rows


def table(run_dir: Path, key: str) -> dict:
    """The table logged under `key`: {"columns": [...], "data": [[...], ...]}, found through the
    sha256 its history row names (the file is media/table/<key>_<step>_<sha256[:20]>.table.json)."""
    logged = [row for row in history(run_dir) if f"{key}.sha256" in row]
    assert logged, f"no table {key!r} in the history of {run_dir}"
    sha = logged[-1][f"{key}.sha256"]
    [path] = list((run_dir / "files" / "media" / "table").glob(f"{key}_*_{sha[:20]}.table.json"))
    return json.loads(path.read_text())


def artifacts(run_dir: Path) -> list[dict]:
    """Each logged artifact: name, type and its manifest entries {path: (digest, size, local_path)}."""
    out = []
    for r in records(next(run_dir.glob("run-*.wandb"))):
        if r.WhichOneof("record_type") == "artifact":
            a = r.artifact
            out.append({"name": a.name, "type": a.type,
                        "files": {c.path: (c.digest, c.size, c.local_path) for c in a.manifest.contents}})
    return out
