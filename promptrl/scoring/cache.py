"""A persistent prompt-score cache shared by every optimiser and every run on this machine.

The target is frozen and deterministic, so a (prompt, example) pair scored once never needs a
second forward pass: OPRO and APE re-propose identical instructions, APPO's queue and the final
evaluation re-score the same prompts, a resumed run repeats the steps after its checkpoint.

Keyed by a namespace — a hash of everything that changes a score: target model and revision,
dtype, backend, task template and label words — plus the prompt text and the example, named by a
hash of its input text (example ids like "test/5" repeat across tasks; the text does not lie).
One SQLite file (WAL mode, busy timeout) is safe for the concurrent jobs of a sweep.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SCHEMA = """CREATE TABLE IF NOT EXISTS scores (
    namespace TEXT NOT NULL, prompt TEXT NOT NULL, example TEXT NOT NULL, logprobs BLOB NOT NULL,
    PRIMARY KEY (namespace, prompt, example)) WITHOUT ROWID"""


def namespace(**identity) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:32]


def example_key(text: str, answers: tuple[str, ...] = ()) -> str:
    """The example's input text (and, for generation tasks, its gold answers, which change its score)."""
    return hashlib.sha1("\x00".join((text, *answers)).encode()).hexdigest()[:20]


class ScoreCache:
    def __init__(self, path: Path, namespace: str):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.namespace = path, namespace
        self.db = sqlite3.connect(path, timeout=60, isolation_level=None)  # autocommit; writes in explicit transactions
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(SCHEMA)
        self.hits = 0
        self.misses = 0

    def get(self, prompt: str, example_ids: list[str]) -> dict[str, torch.Tensor]:
        """The cached label log-probs of `prompt` on those examples that have them."""
        found = {}
        for start in range(0, len(example_ids), 500):  # SQLite's bound-parameter limit
            ids = example_ids[start:start + 500]
            rows = self.db.execute(
                f"SELECT example, logprobs FROM scores WHERE namespace=? AND prompt=? AND example IN ({','.join('?' * len(ids))})",
                [self.namespace, prompt, *ids]).fetchall()
            found.update({ex: torch.frombuffer(bytearray(blob), dtype=torch.float32) for ex, blob in rows})
        return found

    def put(self, prompt: str, example_ids: list[str], logprobs: torch.Tensor) -> None:
        rows = [(self.namespace, prompt, ex, lp.float().contiguous().numpy().tobytes())
                for ex, lp in zip(example_ids, logprobs) if torch.isfinite(lp).all()]  # a NaN is never remembered
        with self.db:  # one transaction
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?)", rows)

    def close(self) -> None:
        self.db.close()
