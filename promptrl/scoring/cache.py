"""A persistent prompt-score cache shared by every optimiser, every run and every job of a sweep.

The target is frozen and deterministic, so a (prompt, example) pair scored once never needs a
second forward pass: OPRO and APE re-propose identical instructions, APPO's queue and the final
evaluation re-score the same prompts, a resumed run repeats the steps after its checkpoint, and
the jobs of a sweep score the same manual and empty prompts on the same test split.

Keyed by a namespace — a hash of everything that changes a score: backend, target model,
which weights (hub commit or files' fingerprint), revision and dtype, the task's template and
label words (generation: template, metrics, max_new_tokens, stop strings), the scoring code's
SCORING_VERSION (`promptrl.scoring.cache_namespace`) — plus the prompt text and the example, named
by a hash of its input text (example ids like "test/5" repeat across tasks; the text does not lie).

Storage, designed for a cluster's shared filesystem (NFS, Lustre) as much as for one disk:
`<cache_dir>/scores/` holds append-only JSONL shards, one per writing process, named
`<host>-<pid>-<random hex>.jsonl` and created with O_EXCL, so no file ever has two writers and
no lock is taken anywhere (SQLite's WAL, the old store, needs shared memory and working POSIX
locks, which network filesystems do not promise). A process appends to its own shard only: each
`put` is one write() of whole lines. A line is one entry, `{"ns", "p", "x", "lp", "crc"}`: the
namespace, prompt, example key, float32 label log-probs (exact in JSON) and the CRC32 of the
line's text before `,"crc"`. A reader keeps the entries of its own namespace, consumes a shard
up to its last newline only, and skips and counts (`damaged`) a line that is not JSON, fails its
CRC or was cut by a writer killed mid-write: a torn entry is never served. On a miss it reads
what other shards have appended since (byte offsets per shard, at most every
`rescan_interval_s`), so concurrent jobs share work. Entries already in memory are kept (a
prompt's score does not change within a run). `promptrl cache merge` (`merge`) compacts the
shards into one and imports an old `scores.sqlite`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import secrets
import socket
import sqlite3
import time
import zlib
from array import array
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SHARDS = "scores"  # the shard directory under cache_dir
OLD_SQLITE = "scores.sqlite"  # the store before the shards, imported by `merge`
START = b'{"ns":"'  # every entry line begins with this
CRC = b',"crc":'
SYNC_INTERVAL_S = 5.0  # a writer fsyncs its shard at most this often (NFS clients flush on fsync/close)


def namespace(**identity) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:32]


def example_key(text: str, answers: tuple[str, ...] = ()) -> str:
    """The example's input text (and, for generation tasks, its gold answers, which change its score)."""
    return hashlib.sha1("\x00".join((text, *answers)).encode()).hexdigest()[:20]


def encode_entry(ns: str, prompt: str, example: str, logprobs) -> bytes:
    """One shard line: ASCII JSON (so a prompt's own newlines are escaped), ending in its CRC."""
    payload = json.dumps({"ns": ns, "p": prompt, "x": example, "lp": [float(v) for v in logprobs]},
                         separators=(",", ":")).encode()
    return payload[:-1] + CRC + str(zlib.crc32(payload)).encode() + b"}\n"


def decode_entry(line: bytes) -> tuple[str, str, str, bytes] | None:
    """(namespace, prompt, example, float32 bytes) of one line without its newline, or None if it
    is damaged. A line glued onto the torn tail of an earlier write is recovered."""
    entry = _decode(line)
    if entry is None and (start := line.rfind(START, 1)) > 0:
        entry = _decode(line[start:])
    return entry


def _decode(line: bytes) -> tuple[str, str, str, bytes] | None:
    cut = line.rfind(CRC)
    if cut < 0 or not line.startswith(START) or not line.endswith(b"}"):
        return None
    payload = line[:cut] + b"}"
    try:
        if zlib.crc32(payload) != int(line[cut + len(CRC):-1]):
            return None
        d = json.loads(payload)
        ns, prompt, example, lp = d["ns"], d["p"], d["x"], d["lp"]
        if not (isinstance(ns, str) and isinstance(prompt, str) and isinstance(example, str)
                and isinstance(lp, list) and lp and all(isinstance(v, (int, float)) for v in lp)):
            return None
        return ns, prompt, example, array("f", lp).tobytes()
    except (ValueError, KeyError, TypeError, OverflowError):
        return None


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:64] or "host"


def shard_name(prefix: str = "") -> str:
    """`<host>-<pid>-<random hex>.jsonl`: no two processes, on one node or many, share a name."""
    return f"{prefix}{_host()}-{os.getpid()}-{secrets.token_hex(4)}.jsonl"


def read_complete(path: Path, offset: int = 0) -> tuple[bytes, int] | None:
    """The bytes of `path` from `offset` up to its last newline and the offset after them; None
    if the file is gone (merged and removed meanwhile). A file opened anew each time: NFS
    revalidates on open (close-to-open consistency)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return None
    end = data.rfind(b"\n") + 1
    return data[:end], offset + end


class ScoreCache:
    """The entries of one namespace in `<cache_dir>/scores/`, and this process's shard there."""

    def __init__(self, cache_dir: Path, namespace: str, rescan_interval_s: float = 2.0):
        self.root = Path(cache_dir)
        self.dir = self.root / SHARDS
        self.dir.mkdir(parents=True, exist_ok=True)
        self.namespace = namespace
        self.rescan_interval_s = rescan_interval_s
        self.entries: dict[str, dict[str, bytes]] = {}  # prompt -> example key -> float32 bytes
        self.hits = 0
        self.misses = 0
        self.damaged = 0  # complete lines skipped: not JSON, bad CRC, torn
        self._prefix = START + namespace.encode() + b'"'
        self._offsets: dict[str, int] = {}  # shard name -> bytes consumed
        self._fd: int | None = None
        self._own: str | None = None  # this process's shard, opened at the first put
        self._pid = os.getpid()
        self._synced = 0.0
        self._writable = True
        self._scanned = 0.0
        self.rescan()
        if (self.root / OLD_SQLITE).exists():
            log.info("score cache: %s is the old SQLite store, not read any more; `promptrl cache merge %s` imports it",
                     self.root / OLD_SQLITE, self.root)

    def count(self) -> int:
        """Entries of this namespace in memory (not __len__: an empty cache is still a cache)."""
        return sum(len(d) for d in self.entries.values())

    def get(self, prompt: str, example_ids: list[str]) -> dict[str, torch.Tensor]:
        """The cached label log-probs of `prompt` on those examples that have them. On a miss,
        what other processes appended since the last look is read first (at most every
        `rescan_interval_s`)."""
        known = self.entries.get(prompt, {})
        if any(ex not in known for ex in example_ids) and time.monotonic() - self._scanned >= self.rescan_interval_s:
            self.rescan()
            known = self.entries.get(prompt, {})
        found = {ex: torch.frombuffer(bytearray(known[ex]), dtype=torch.float32) for ex in example_ids if ex in known}
        self.hits += len(found)
        self.misses += len(example_ids) - len(found)
        return found

    def put(self, prompt: str, example_ids: list[str], logprobs: torch.Tensor) -> None:
        """Remember finite rows (a NaN is never remembered), in memory and in this process's shard."""
        known = self.entries.setdefault(prompt, {})
        lines = []
        for ex, lp in zip(example_ids, logprobs):
            if not torch.isfinite(lp).all():
                continue
            values = lp.detach().float().contiguous()
            known[ex] = values.numpy().tobytes()
            lines.append(encode_entry(self.namespace, prompt, ex, values.tolist()))
        if lines and self._writable:
            self._append(b"".join(lines))

    def rescan(self) -> None:
        """Read what every other shard appended since the last scan (complete lines only)."""
        self._scanned = time.monotonic()
        try:
            shards = [e for e in os.scandir(self.dir) if e.name.endswith(".jsonl") and e.name != self._own]
        except FileNotFoundError:
            return
        damaged = self.damaged
        names = {e.name for e in shards}
        self._offsets = {name: offset for name, offset in self._offsets.items() if name in names}  # merged away
        for shard in sorted(shards, key=lambda e: e.name):
            offset = self._offsets.get(shard.name, 0)
            try:
                if shard.stat().st_size <= offset:
                    continue
            except FileNotFoundError:
                continue
            got = read_complete(Path(shard.path), offset)
            if got is None:
                continue
            data, self._offsets[shard.name] = got
            self._ingest(data)
        if self.damaged > damaged:
            (log.warning if not damaged else log.debug)(
                "score cache: skipped %d damaged line(s) in %s (torn by a killed writer or corrupt); "
                "they are never served", self.damaged - damaged, self.dir)

    def _ingest(self, data: bytes) -> None:
        for line in data.split(b"\n"):
            if not line:
                continue
            if not line.startswith(self._prefix) and line.startswith(START) and self._prefix not in line:
                continue  # another namespace's entry: not parsed (the prefix test is all it costs)
            entry = decode_entry(line)  # ours, garbage, or a torn write with an entry of ours glued after it
            if entry is None:
                self.damaged += 1
            elif entry[0] == self.namespace:
                self.entries.setdefault(entry[1], {}).setdefault(entry[2], entry[3])

    def _append(self, data: bytes) -> None:
        """One write() of whole lines to this process's own shard. A shard removed by a merge is
        replaced by a new one; any other write error (a full disk) turns writing off with a
        warning: the run goes on, scoring what it cannot remember."""
        for attempt in range(2):
            try:
                if self._fd is not None and self._pid == os.getpid() and os.fstat(self._fd).st_nlink == 0:
                    self.close()  # merged away: what it held is in the merged shard
                if self._fd is None or self._pid != os.getpid():
                    self._open_shard()  # the first put, or a forked child (never share a parent's shard)
                written = os.write(self._fd, data)
                if written != len(data):
                    raise OSError(errno.ENOSPC, f"short write ({written} of {len(data)} bytes)")
                if time.monotonic() - self._synced >= SYNC_INTERVAL_S:
                    os.fsync(self._fd)
                    self._synced = time.monotonic()
                return
            except OSError as e:
                if attempt == 0 and e.errno in (errno.ESTALE, errno.ENOENT):
                    self._drop()  # removed under us on a network filesystem: start a new shard
                    continue
                self._writable = False
                log.warning("score cache: cannot write %s (%s); scores are no longer remembered by this run",
                            self.dir / (self._own or "?"), e)
                return

    def _open_shard(self) -> None:
        """A new file of this process's own: O_EXCL, so a name that exists (never, but a file two
        processes append to would be the one way to interleave lines) is never appended to."""
        self._pid = os.getpid()
        for attempt in range(8):
            name = shard_name()
            try:
                self._fd = os.open(self.dir / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                if attempt == 7:
                    raise
                continue
            self._own = name
            return

    def close(self) -> None:
        """Flush this process's shard to the server (NFS) and close it; a later put opens a new one."""
        if self._fd is not None and self._pid == os.getpid():
            try:
                os.fsync(self._fd)
            except OSError:
                pass
        self._drop()

    def _drop(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


@dataclass
class MergeSummary:
    entries: int  # distinct entries in the merged shard
    shards: int  # shards merged (and removed)
    torn: int  # lines dropped: damaged, or an unterminated tail of a killed writer
    imported: int  # entries read from an old scores.sqlite
    skipped: int  # shards left alone: written recently, or their writer is alive on this host
    path: Path | None  # the merged shard (None: nothing to merge)

    def line(self) -> str:
        where = f" into {self.path}" if self.path else ""
        return (f"promptrl cache merge: {self.entries} entries from {self.shards} shard(s){where}; "
                f"{self.torn} torn line(s) dropped; {self.imported} imported from {OLD_SQLITE}; "
                f"{self.skipped} shard(s) in use left alone")


def writer_alive(name: str) -> bool:
    """Whether the process that names `name` (`<host>-<pid>-<hex>.jsonl`) runs on this host.
    A shard of another host cannot be asked: its age decides."""
    if name.startswith("merged-"):  # written whole by a merge, never appended to
        return False
    m = re.fullmatch(r"(.+)-(\d+)-[0-9a-f]+\.jsonl", name)
    if not m or m.group(1) != _host():
        return False
    pid = int(m.group(2))
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def merge(cache_dir: Path, min_age_s: float = 60.0) -> MergeSummary:
    """Compact `<cache_dir>/scores/*.jsonl` (and an old `<cache_dir>/scores.sqlite`) into one new
    shard: written to a temp file, fsynced and renamed (os.replace), then the merged shards are
    removed and the SQLite file renamed `scores.sqlite.imported`. Shards written in the last
    `min_age_s` seconds, or whose writer still runs on this host, are left alone, so a merge
    while jobs run loses nothing they are writing; a job whose idle shard was merged starts a
    new one at its next put. Whatever happens, a score is never wrong: the worst a merge racing
    a writer can do is drop an entry appended during it, which is computed again."""
    root = Path(cache_dir)
    shard_dir = root / SHARDS
    shard_dir.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for stale in shard_dir.glob(".merge-*.tmp"):  # a merge killed before its rename
        if now - stale.stat().st_mtime > 3600:
            stale.unlink(missing_ok=True)
    entries: dict[tuple[str, str, str], bytes] = {}
    torn = skipped = imported = 0
    chosen: list[Path] = []
    for path in sorted(shard_dir.glob("*.jsonl")):
        try:
            idle = now - path.stat().st_mtime
        except FileNotFoundError:
            continue
        if idle < min_age_s or writer_alive(path.name):
            skipped += 1
            continue
        with open(path, "rb") as f:
            data = f.read()
        for line in data.split(b"\n"):  # an unterminated last line is a killed writer's torn tail
            if not line:
                continue
            entry = decode_entry(line)
            if entry is None:
                torn += 1
            else:
                entries.setdefault(entry[:3], entry[3])
        chosen.append(path)
    old = root / OLD_SQLITE
    # In WAL mode the main file may not change for hours while -wal does: the newest of the three.
    touched = max((p.stat().st_mtime for p in (old, root / f"{OLD_SQLITE}-wal", root / f"{OLD_SQLITE}-shm") if p.exists()),
                  default=None)
    take_old = old.exists() and touched is not None and now - touched >= min_age_s
    if old.exists() and not take_old:
        skipped += 1
    if take_old:
        for key, blob in read_sqlite(old):
            if key not in entries:
                entries[key] = blob
                imported += 1
    out = None
    if entries:
        out = shard_dir / shard_name("merged-")
        tmp = shard_dir / f".merge-{out.stem}.tmp"  # not *.jsonl: no reader looks at it
        with open(tmp, "wb") as f:
            for (ns, prompt, example), blob in sorted(entries.items()):
                f.write(encode_entry(ns, prompt, example, array("f", blob).tolist()))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
        _fsync_dir(shard_dir)
    for path in chosen:
        path.unlink(missing_ok=True)
    if take_old:
        for suffix in ("", "-wal", "-shm"):
            src = root / (OLD_SQLITE + suffix)
            if src.exists():
                os.replace(src, root / (OLD_SQLITE + ".imported" + suffix))
    return MergeSummary(len(entries), len(chosen), torn, imported, skipped, out)


def read_sqlite(path: Path) -> list[tuple[tuple[str, str, str], bytes]]:
    """The rows of the old SQLite store, opened read-only. Their namespaces name no weights and no
    SCORING_VERSION, so today's scorers never serve them: imported to be kept, not trusted."""
    uri = f"file:{path.resolve()}?mode=ro"
    try:
        db = sqlite3.connect(uri, uri=True)
        rows = db.execute("SELECT namespace, prompt, example, logprobs FROM scores").fetchall()
    except sqlite3.OperationalError:  # a WAL database whose -shm cannot be made here: read the main file only
        db = sqlite3.connect(uri + "&immutable=1", uri=True)
        rows = db.execute("SELECT namespace, prompt, example, logprobs FROM scores").fetchall()
    db.close()
    out = []
    for ns, prompt, example, blob in rows:
        values = array("f", bytes(blob))
        if values and all(v == v and abs(v) != float("inf") for v in values):
            out.append(((ns, prompt, example), values.tobytes()))
    return out


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
