"""The prompt-score cache (promptrl/scoring/cache.py): append-only JSONL shards, one per writing
process, no locks. What it must survive: many processes on one cache directory, a writer killed
mid-write, foreign tasks and targets in the same directory, and compaction (`promptrl cache
merge`), including the import of the old SQLite store. Fast: no model beyond the tiny one."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import time
from array import array
from pathlib import Path

import pytest
import torch

from promptrl.scoring import SCORING_VERSION, attach_cache, cache_namespace
from promptrl.scoring.cache import SHARDS, ScoreCache, _host, decode_entry, encode_entry, merge, namespace
from promptrl.scoring.hf import HFScorer
from promptrl.tasks import Example, Task

from conftest import make_model, make_tokenizer, run_cli

WORKERS = 4
OWN = 300  # distinct entries per worker
SHARED = 60  # entries every worker writes (the same computation, the same values)


def exact(got: dict, want: dict) -> bool:
    return got.keys() == want.keys() and all(torch.equal(got[k], torch.tensor(v, dtype=torch.float32))
                                             for k, v in want.items())


# One writer of the concurrency test, in a fresh interpreter (`python -c`: it imports the cache
# only, not this module's transformers). It writes its own entries in puts of 10 and the shared
# ones in between, reads a neighbour's entries while they are being written (each must be exact),
# then waits until every worker is done (marker files, no lock) and must see all entries.
WORKER = """
import sys, time, torch
from pathlib import Path
from promptrl.scoring.cache import ScoreCache
root, worker, workers, own, shared_n = Path(sys.argv[1]), *map(int, sys.argv[2:6])

def own_values(w):
    return {f"e{i}": [-float(w) - 0.25, -i / 7] for i in range(own)}  # i / 7: not a short decimal

def exact(got, want):
    return got.keys() == want.keys() and all(torch.equal(got[k], torch.tensor(v)) for k, v in want.items())

shared = {f"s{i}": [-i / 3, -1.5] for i in range(shared_n)}
cache = ScoreCache(root, "ns", rescan_interval_s=0)
mine, keys, skeys = own_values(worker), list(own_values(worker)), list(shared)
neighbour = (worker + 1) % workers
partial_reads = 0
for n, start in enumerate(range(0, own, 10)):
    ids = keys[start:start + 10]
    cache.put(f"prompt {worker}", ids, torch.tensor([mine[k] for k in ids]))
    s = skeys[(2 * n) % shared_n:(2 * n) % shared_n + 2]
    cache.put("shared prompt", s, torch.tensor([shared[k] for k in s]))
    seen = cache.get(f"prompt {neighbour}", keys)
    assert exact(seen, {k: own_values(neighbour)[k] for k in seen}), "a wrong value of the neighbour"
    partial_reads += 0 < len(seen) < own
(root / f"done-{worker}").touch()
deadline = time.time() + 120
while not all((root / f"done-{w}").exists() for w in range(workers)):
    assert time.time() < deadline, "the other workers never finished"
    time.sleep(0.05)
for w in range(workers):
    assert exact(cache.get(f"prompt {w}", keys), own_values(w)), f"entries of worker {w} missing"
assert exact(cache.get("shared prompt", skeys), shared), "shared entries wrong"
assert cache.damaged == 0, f"{cache.damaged} damaged lines"
print("partial reads", partial_reads)
"""


def own_values(worker: int) -> dict[str, list[float]]:
    return {f"e{i}": [-float(worker) - 0.25, -i / 7] for i in range(OWN)}


def shared_values() -> dict[str, list[float]]:
    return {f"s{i}": [-i / 3, -1.5] for i in range(SHARED)}


def test_processes_writing_and_reading_one_directory_lose_and_tear_nothing(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path), str(w), str(WORKERS), str(OWN), str(SHARED)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in range(WORKERS)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * WORKERS, [err[-2000:] for _, err in outs]
    shards = sorted((tmp_path / SHARDS).iterdir())
    assert len(shards) == WORKERS and all(s.suffix == ".jsonl" for s in shards)  # one file per writer
    fresh = ScoreCache(tmp_path, "ns")
    for w in range(WORKERS):
        assert exact(fresh.get(f"prompt {w}", list(own_values(w))), own_values(w))
    assert exact(fresh.get("shared prompt", list(shared_values())), shared_values())
    assert fresh.count() == WORKERS * OWN + SHARED and fresh.damaged == 0


def shard_lines(entries: list[tuple[str, str, list[float]]], ns: str = "ns") -> list[bytes]:
    return [encode_entry(ns, p, x, lp) for p, x, lp in entries]


def test_a_torn_last_line_or_a_bad_crc_is_never_served(tmp_path):
    (tmp_path / SHARDS).mkdir()
    good = [("p", f"e{i}", [-0.5 - i, -2.0]) for i in range(5)]
    bad_crc = encode_entry("ns", "p", "e5", [-1.0, -1.0]).replace(b"-1.0,-1.0", b"-1.0,-9.0")  # one value changed
    torn = encode_entry("ns", "p", "e6", [-3.0, -4.0])
    head = b"".join(shard_lines(good)) + bad_crc
    shard = tmp_path / SHARDS / "deadhost-123-abcd.jsonl"
    ids = [f"e{i}" for i in range(8)]
    want = {x: lp for _, x, lp in good}
    for cut in range(1, len(torn)):  # killed after any byte of its last line, the newline included
        shard.write_bytes(head + torn[:cut])
        cache = ScoreCache(tmp_path, "ns")
        assert exact(cache.get("p", ids), want), cut  # the complete entries, not e5, never e6
        assert cache.damaged == 1
    # a writer appending after the torn tail: its line is recovered, the torn one still dropped
    with open(shard, "ab") as f:
        f.write(encode_entry("ns", "p", "e7", [-7.0, -0.125]))
    assert exact(ScoreCache(tmp_path, "ns").get("p", ids), {**want, "e7": [-7.0, -0.125]})
    # a new process scores e5 and e6 again: its own shard, served beside the old complete entries
    code = ("import sys, torch; from pathlib import Path; from promptrl.scoring.cache import ScoreCache;"
            "ScoreCache(Path(sys.argv[1]), 'ns').put('p', ['e5', 'e6'], torch.tensor([[-1.0, -1.0], [-3.0, -4.0]]))")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=120)
    again = ScoreCache(tmp_path, "ns")
    assert exact(again.get("p", ids), {**want, "e5": [-1.0, -1.0], "e6": [-3.0, -4.0], "e7": [-7.0, -0.125]})
    assert again.damaged == 1 and len(list((tmp_path / SHARDS).glob("*.jsonl"))) == 2


def test_entries_round_trip_exactly_and_damage_is_detected():
    values = torch.tensor([-1 / 3, -123.456789, -1e-30], dtype=torch.float32)
    line = encode_entry("ns", 'a "quoted"\nprompt ü,"crc":1}', "x1", values.tolist())
    assert line.count(b"\n") == 1 and line.endswith(b"}\n") and line.isascii()
    ns, prompt, example, blob = decode_entry(line[:-1])
    assert (ns, prompt, example) == ("ns", 'a "quoted"\nprompt ü,"crc":1}', "x1")
    assert torch.equal(torch.frombuffer(bytearray(blob), dtype=torch.float32), values)  # bit-exact
    for i in range(len(line) - 1):  # any one byte changed: not served
        damaged = line[:i] + bytes([line[i] ^ 0x04]) + line[i + 1:-1]
        entry = decode_entry(damaged)
        assert entry is None or entry == decode_entry(line[:-1]), i


def test_nan_rows_are_never_stored(tmp_path):
    cache = ScoreCache(tmp_path, "ns")
    cache.put("p", ["a", "b"], torch.tensor([[float("nan"), -1.0], [-1.0, -2.0]]))
    assert list(ScoreCache(tmp_path, "ns").get("p", ["a", "b"])) == ["b"] and list(cache.get("p", ["a", "b"])) == ["b"]


def test_a_foreign_namespace_is_never_served(tmp_path):
    a, b = ScoreCache(tmp_path, "task-a"), ScoreCache(tmp_path, "task-b")
    a.put("same prompt", ["same example"], torch.tensor([[-1.0, -2.0]]))
    b.put("same prompt", ["same example"], torch.tensor([[-5.0, -6.0]]))
    assert exact(ScoreCache(tmp_path, "task-a").get("same prompt", ["same example"]), {"same example": [-1.0, -2.0]})
    assert exact(ScoreCache(tmp_path, "task-b").get("same prompt", ["same example"]), {"same example": [-5.0, -6.0]})
    assert ScoreCache(tmp_path, "task-c").get("same prompt", ["same example"]) == {}
    # a namespace that is a prefix of another is still another
    assert ScoreCache(tmp_path, "task-").get("same prompt", ["same example"]) == {}


def make_task(template="{prompt} input : {input} sentiment :", label_words=(" bad", " good"), name="toy"):
    examples = [Example(id=f"t/{i}", text=t, label=i % 2) for i, t in enumerate(["great", "not good", "i love it"])]
    return Task(name=name, kind="classification", template=template, label_words=list(label_words),
                metric="accuracy", manual_prompt="", train=examples, dev=examples, test=examples)


def test_the_namespace_covers_target_revision_dtype_backend_template_and_label_words():
    tok = make_tokenizer()
    model = make_model(len(tok))
    base = cache_namespace(HFScorer(model, tok, make_task(), "tiny", revision="r1"))
    assert base == cache_namespace(HFScorer(model, tok, make_task(name="renamed"), "tiny", revision="r1"))
    changed = {
        "revision": HFScorer(model, tok, make_task(), "tiny", revision="r2"),
        "dtype": HFScorer(make_model(len(tok)).to(torch.bfloat16), tok, make_task(), "tiny", revision="r1"),
        "target name": HFScorer(model, tok, make_task(), "other", revision="r1"),
        "template": HFScorer(model, tok, make_task(template="{prompt} review : {input} sentiment :"), "tiny", revision="r1"),
        "label words": HFScorer(model, tok, make_task(label_words=(" good", " bad")), "tiny", revision="r1"),
    }
    spaces = {what: cache_namespace(s) for what, s in changed.items()}
    assert base not in spaces.values() and len(set(spaces.values())) == len(spaces), spaces
    # another backend on the same model is another namespace; a server's revision counts when set
    from promptrl.scoring.server import ServerScorer

    server = [ServerScorer(tok, make_task(), "tiny", "http://127.0.0.1:9/v1", "tiny", max_len=64, revision=r)
              for r in (None, "r1", "r2")]
    assert len({base, *map(cache_namespace, server)}) == 4
    # a server is known by its URL and served model, plus the scoring code's version
    assert cache_namespace(server[0]) == namespace(scorer="server", name="tiny", url="http://127.0.0.1:9/v1", model="tiny",
                                                   template=make_task().template, label_words=[" bad", " good"],
                                                   scoring_version=SCORING_VERSION)


def test_a_foreign_target_scores_for_itself(tmp_path):
    tok = make_tokenizer()
    task = make_task()
    prompts = ["classify", "the sentiment"]
    first = HFScorer(make_model(len(tok), seed=0), tok, task, "tiny", revision="r1")
    attach_cache(first, tmp_path)
    want_first = first.score(prompts, task.test).label_logprobs
    other = HFScorer(make_model(len(tok), seed=1), tok, task, "tiny", revision="r2")  # other weights, other revision
    attach_cache(other, tmp_path)
    got = other.score(prompts, task.test).label_logprobs
    assert other.cache_hits == 0 and not torch.equal(got, want_first)
    torch.testing.assert_close(got, HFScorer(make_model(len(tok), seed=1), tok, task, "tiny").score(prompts, task.test).label_logprobs)


def test_a_cached_scorer_answers_a_repeated_scoring_from_the_cache(tmp_path):
    tok = make_tokenizer()
    model = make_model(len(tok))
    task = make_task()
    scorer = HFScorer(model, tok, task, "tiny")
    attach_cache(scorer, tmp_path)
    want = scorer.score(["classify"], task.test).label_logprobs
    assert (scorer.cache_hits, scorer.cache_misses) == (0, 3)
    got = scorer.score(["classify"], task.test).label_logprobs
    assert (scorer.cache_hits, scorer.cache_misses) == (3, 3) and torch.equal(got, want) and scorer.calls == 6
    scorer.close()
    assert scorer.cache._fd is None  # the shard is closed with the scorer (sweeps run many jobs in one process)


def write_old_sqlite(path: Path, rows: list[tuple[str, str, str, list[float]]]) -> None:
    """The store before the shards, in its own schema."""
    db = sqlite3.connect(path)
    db.execute("""CREATE TABLE scores (namespace TEXT NOT NULL, prompt TEXT NOT NULL, example TEXT NOT NULL,
                  logprobs BLOB NOT NULL, PRIMARY KEY (namespace, prompt, example)) WITHOUT ROWID""")
    db.executemany("INSERT INTO scores VALUES (?, ?, ?, ?)", [(ns, p, x, array("f", lp).tobytes()) for ns, p, x, lp in rows])
    db.commit()
    db.close()


PUTS = """import json, sys, torch
from pathlib import Path
from promptrl.scoring.cache import ScoreCache
caches = {}
for ns, prompt, ids, values in json.loads(sys.argv[2]):
    caches.setdefault(ns, ScoreCache(Path(sys.argv[1]), ns)).put(prompt, ids, torch.tensor(values))
"""


def put_in_another_process(cache_dir: Path, puts: list) -> None:
    """Entries written by a job that has ended (its shards are then a merge's to take)."""
    subprocess.run([sys.executable, "-c", PUTS, str(cache_dir), json.dumps(puts)], check=True, timeout=300)


def test_cache_merge_compacts_shards_and_imports_the_old_sqlite(tmp_path, capsys):
    put_in_another_process(tmp_path, [("ns-a", "p", ["x1", "x2"], [[-1.0, -2.0], [-3.0, -4.0]]),
                                      ("ns-b", "p", ["x1"], [[-9.0, -8.0]]), ("ns-b", "q", ["x1"], [[-0.5, -0.25]])])
    killed = tmp_path / SHARDS / "deadhost-77-beef.jsonl"  # a writer killed mid-line, on another node
    killed.write_bytes(encode_entry("ns-a", "p", "x3", [-5.0, -6.0]) + encode_entry("ns-a", "p", "x4", [-7.0, -7.0])[:30])
    write_old_sqlite(tmp_path / "scores.sqlite", [("ns-a", "old", "x1", [-0.75, -1.25]), ("ns-a", "p", "x1", [-1.0, -2.0]),
                                                  ("ns-b", "old", "x9", [-2.5, -3.5]),
                                                  ("ns-b", "nan", "x9", [float("nan"), -1.0])])
    res = run_cli("cache", "merge", str(tmp_path), "--min-age", "0", timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().count("\n") == 0
    assert "7 entries from 3 shard(s)" in res.stdout and "1 torn line(s) dropped" in res.stdout, res.stdout
    assert "2 imported from scores.sqlite" in res.stdout, res.stdout
    left = sorted(p.name for p in (tmp_path / SHARDS).iterdir())
    assert len(left) == 1 and left[0].startswith("merged-") and left[0].endswith(".jsonl")  # one file; no temp file
    assert not (tmp_path / "scores.sqlite").exists() and (tmp_path / "scores.sqlite.imported").exists()
    ca, cb = ScoreCache(tmp_path, "ns-a"), ScoreCache(tmp_path, "ns-b")
    assert exact(ca.get("p", ["x1", "x2", "x3", "x4"]), {"x1": [-1.0, -2.0], "x2": [-3.0, -4.0], "x3": [-5.0, -6.0]})
    assert exact(ca.get("old", ["x1"]), {"x1": [-0.75, -1.25]})
    assert exact(cb.get("p", ["x1"]), {"x1": [-9.0, -8.0]}) and exact(cb.get("q", ["x1"]), {"x1": [-0.5, -0.25]})
    assert exact(cb.get("old", ["x9"]), {"x9": [-2.5, -3.5]}) and cb.get("nan", ["x9"]) == {}
    assert ca.damaged == cb.damaged == 0
    from promptrl.cli import cache_main  # what `promptrl cache` runs, in this process (saves a start)

    assert cache_main(["merge", str(tmp_path), "--min-age", "0"]) == 0  # idempotent
    out = capsys.readouterr()
    assert "7 entries from 1 shard(s)" in out.out and "0 imported" in out.out, out.out
    assert cache_main(["merge", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_merge_leaves_shards_in_use_alone_and_a_merged_writer_goes_on(tmp_path):
    recent = ScoreCache(tmp_path, "ns")
    recent.put("p", ["x1"], torch.tensor([[-1.0, -2.0]]))
    write_old_sqlite(tmp_path / "scores.sqlite", [("ns", "p", "x0", [-1.0, -1.0])])
    os.utime(tmp_path / "scores.sqlite", (time.time() - 3600, time.time() - 3600))
    (tmp_path / "scores.sqlite-wal").write_bytes(b"")  # an old job still writes its WAL
    summary = merge(tmp_path)
    assert summary.shards == 0 and summary.skipped == 2 and summary.path is None  # written just now
    assert len(list((tmp_path / SHARDS).glob("*.jsonl"))) == 1 and (tmp_path / "scores.sqlite").exists()
    (tmp_path / "scores.sqlite-wal").unlink()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        live = tmp_path / SHARDS / f"{_host()}-{sleeper.pid}-abcd.jsonl"  # a live writer on this host, idle long
        live.write_bytes(encode_entry("ns", "p", "x2", [-3.0, -4.0]))
        os.utime(live, (time.time() - 3600, time.time() - 3600))
        summary = merge(tmp_path, min_age_s=0)
        assert live.exists() and summary.skipped == 1 and summary.shards == 1  # `recent` is this process: merged
        assert summary.imported == 1 and (tmp_path / "scores.sqlite.imported").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    recent.put("p", ["x3"], torch.tensor([[-5.0, -6.0]]))  # its shard was merged away: it starts a new one
    fresh = ScoreCache(tmp_path, "ns")
    assert exact(fresh.get("p", ["x0", "x1", "x2", "x3"]),
                 {"x0": [-1.0, -1.0], "x1": [-1.0, -2.0], "x2": [-3.0, -4.0], "x3": [-5.0, -6.0]})
    assert merge(tmp_path, min_age_s=0).shards == 3 and not live.exists()  # its writer is gone


def test_a_write_error_turns_writing_off_and_the_run_goes_on(tmp_path, caplog):
    cache = ScoreCache(tmp_path, "ns")
    cache.put("p", ["x0"], torch.tensor([[-1.0, -2.0]]))
    os.close(cache._fd)
    cache._fd = os.open("/dev/full", os.O_WRONLY)  # its shard's disk is full from now on (ENOSPC)
    with caplog.at_level(logging.WARNING, logger="promptrl.scoring.cache"):
        cache.put("p", ["x1"], torch.tensor([[-1.0, -2.0]]))
        cache.put("p", ["x2"], torch.tensor([[-1.0, -2.0]]))
    assert sum("cannot write" in r.message for r in caplog.records) == 1
    assert list(cache.get("p", ["x1", "x2"])) == ["x1", "x2"]  # remembered in memory for this run
    assert list(ScoreCache(tmp_path, "ns").get("p", ["x0", "x1"])) == ["x0"]


def test_a_shard_name_that_exists_is_never_appended_to(tmp_path, monkeypatch):
    import promptrl.scoring.cache as cache_module

    names = iter(["taken.jsonl", "free.jsonl"])
    monkeypatch.setattr(cache_module, "shard_name", lambda prefix="": next(names))
    (tmp_path / SHARDS).mkdir()
    taken = tmp_path / SHARDS / "taken.jsonl"
    taken.write_bytes(encode_entry("ns", "p", "x1", [-1.0, -2.0]))
    ScoreCache(tmp_path, "ns").put("p", ["x2"], torch.tensor([[-3.0, -4.0]]))
    assert taken.read_bytes() == encode_entry("ns", "p", "x1", [-1.0, -2.0])
    assert (tmp_path / SHARDS / "free.jsonl").read_bytes() == encode_entry("ns", "p", "x2", [-3.0, -4.0])


@pytest.mark.parametrize("interval,seen", [(0, True), (3600, False)])
def test_a_miss_reads_what_other_processes_appended_at_most_every_interval(tmp_path, interval, seen):
    reader = ScoreCache(tmp_path, "ns", rescan_interval_s=interval)
    ScoreCache(tmp_path, "ns").put("p", ["x1"], torch.tensor([[-1.0, -2.0]]))
    assert bool(reader.get("p", ["x1"])) is seen


# --- which weights and which scoring code a namespace names ---------------------------------------
def local_target(tmp_path, seed: int):
    """A tiny model and its tokenizer saved in `tmp_path/model` (over whatever was there) and the
    target config that loads it."""
    from omegaconf import OmegaConf

    from promptrl.config import TargetConfig

    tok = make_tokenizer()
    make_model(len(tok), seed=seed).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    return OmegaConf.structured(TargetConfig(name="tiny", model=str(tmp_path / "model"), dtype="float32", device="cpu"))


def test_new_weights_in_a_local_directory_are_scored_afresh(tmp_path):
    task = make_task()
    prompts = ["classify", "the sentiment"]
    cache = tmp_path / "cache"

    def cached(cfg):
        scorer = HFScorer.from_config(cfg, task, str(cache))
        attach_cache(scorer, cache)
        return scorer

    old = cached(local_target(tmp_path, seed=0))
    old_scores = old.score(prompts, task.test).label_logprobs
    old.close()
    again = cached(local_target(tmp_path, seed=0))  # the same weights saved again: served from the cache
    assert torch.equal(again.score(prompts, task.test).label_logprobs, old_scores) and again.cache_misses == 0
    again.close()
    new = cached(local_target(tmp_path, seed=1))  # other weights, same directory, same config
    got = new.score(prompts, task.test).label_logprobs
    assert new.cache_hits == 0 and not torch.equal(got, old_scores)
    torch.testing.assert_close(got, HFScorer(make_model(len(make_tokenizer()), seed=1), make_tokenizer(), task, "tiny")
                               .score(prompts, task.test).label_logprobs)
    assert new.identity()["weights"].startswith("files:") and new.identity()["weights"] != old.identity()["weights"]


def test_the_namespace_names_the_scoring_code_version(monkeypatch):
    import promptrl.scoring

    tok = make_tokenizer()
    scorer = HFScorer(make_model(len(tok)), tok, make_task(), "tiny")
    before = cache_namespace(scorer)
    monkeypatch.setattr(promptrl.scoring, "SCORING_VERSION", SCORING_VERSION + 1)
    assert cache_namespace(scorer) != before


def test_a_model_in_memory_is_known_by_its_parameters():
    tok = make_tokenizer()
    same = [HFScorer(make_model(len(tok), seed=0), tok, make_task(), "tiny") for _ in range(2)]
    other = HFScorer(make_model(len(tok), seed=1), tok, make_task(), "tiny")
    assert cache_namespace(same[0]) == cache_namespace(same[1]) != cache_namespace(other)
    with torch.no_grad():
        same[1].model.lm_head.weight[0, 0] += 1.0  # tied to the embeddings: both change
    assert cache_namespace(same[0]) != cache_namespace(same[1])


def test_a_hub_model_is_known_by_its_snapshot_commit(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from promptrl.models import weights_identity

    sha, older = "a" * 40, "b" * 40
    repo = tmp_path / "hub" / "models--org--m"
    for commit in (sha, older):
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert weights_identity("org/m") == f"commit:{sha}"
    assert weights_identity("org/m", revision=older) == f"commit:{older}"
    assert weights_identity("org/m", commit="c" * 40) == "commit:" + "c" * 40  # what the loaded config says wins
    assert weights_identity("org/not-downloaded") is None


def test_a_target_whose_weights_cannot_be_told_gets_no_cache(tmp_path):
    from promptrl.scoring.vllm_engine import VLLMScorer

    class Engine:  # what VLLMScorer reads of a vllm.LLM before scoring
        class llm_engine:
            class model_config:
                max_model_len = 64

    tok = make_tokenizer()
    scorer = VLLMScorer(Engine(), tok, make_task(), "tiny", {"scorer": "vllm", "name": "tiny", "model": "org/m", "weights": None})
    attach_cache(scorer, tmp_path)
    assert scorer.cache is None and not (tmp_path / SHARDS).exists()


def test_each_gguf_file_of_a_package_converts_into_its_own_directory(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    import promptrl.models as models
    from promptrl.config import TargetConfig

    monkeypatch.setattr(models, "packaged_gguf_path", lambda package, filename, cache: tmp_path / filename)
    monkeypatch.setattr(models, "package_version", lambda package: "pkg-1.0")
    monkeypatch.setattr(models, "convert_gguf", lambda gguf, out_dir: out_dir)
    paths = {f: models.model_path(OmegaConf.structured(TargetConfig(name="m", model="org/m", gguf_package="pkg", gguf_file=f)),
                                  str(tmp_path))
             for f in ("m.Q4_K_M.gguf", "m.Q8_0.gguf")}
    assert len(set(paths.values())) == 2
    assert paths["m.Q8_0.gguf"] == str(tmp_path / "models" / "m-pkg-1.0-m.Q8_0")


def test_the_vllm_scorer_names_the_weights_its_engine_loaded(tmp_path):
    from promptrl.scoring.vllm_engine import VLLMScorer

    class Engine:  # a vllm.LLM as VLLMScorer.from_config reads it, with no engine behind it
        class llm_engine:
            class model_config:
                max_model_len, dtype = 1024, "torch.float32"

    cfg = local_target(tmp_path, seed=0)
    vllm_weights = VLLMScorer.from_config(cfg, make_task(), str(tmp_path), llm=Engine()).identity()["weights"]
    assert vllm_weights.startswith("files:") and vllm_weights == HFScorer.from_config(cfg, make_task(), str(tmp_path)).identity()["weights"]
    assert VLLMScorer.from_config(local_target(tmp_path, seed=1), make_task(), str(tmp_path), llm=Engine()).identity()["weights"] != vllm_weights
