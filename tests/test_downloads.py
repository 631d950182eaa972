"""Instruction-induction downloads, against a local HTTP server (no network): a bad answer is
never cached, a good one is cached under the run's cache_dir, concurrent jobs do not collide."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from promptrl.config import register_configs
from promptrl.errors import UserError
from promptrl.tasks import load_task
from promptrl.tasks.induction import fetch

CONF = Path(__file__).resolve().parent.parent / "conf"


def ii_file(n: int, pad: int = 0) -> bytes:
    return json.dumps({"examples": {str(i + 1): {"input": f"word{i} " + "x" * pad, "output": f"drow{i}"} for i in range(n)}}).encode()


@pytest.fixture
def server():
    """A local server answering GET /<split>/<task>.json from `served` (path -> bytes); `barrier`,
    when set, holds every answer until that many requests are waiting."""
    state = {"served": {}, "barrier": None, "requests": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            state["requests"] += 1
            if state["barrier"] is not None:
                state["barrier"].wait(timeout=10)
            body = state["served"].get(self.path)
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write(body if body is not None else b"not found")

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{httpd.server_address[1]}" + "/{split}/{task}.json"
    yield state
    httpd.shutdown()
    httpd.server_close()


def ii_config(url: str):
    register_configs()
    with initialize_config_dir(str(CONF), version_base="1.3", job_name="test"):
        cfg = compose("train", overrides=["task=ii_antonyms"]).task
    cfg.data_dir = None
    cfg.data_url = url
    return cfg


def test_a_bad_download_is_never_cached(server, tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTRL_CACHE", str(tmp_path / "cache"))  # the default cache_dir
    cfg = ii_config(server["url"])
    cache = tmp_path / "cache"
    server["served"] = {"/induce/antonyms.json": b"<html>429 Too Many Requests</html>", "/execute/antonyms.json": ii_file(20)}
    with pytest.raises(UserError, match=r"downloaded http://127.0.0.1:\d+/induce/antonyms.json, but it is not an "
                                        r"instruction-induction file \(not JSON: .*line 1 column 1\)"):
        load_task(cfg, 0)
    assert not [p for p in cache.rglob("*") if p.is_file()]  # nothing cached, no temp file left
    server["served"]["/induce/antonyms.json"] = json.dumps({"examples": []}).encode()  # JSON, but not the structure
    with pytest.raises(UserError, match=r"no non-empty 'examples' object"):
        load_task(cfg, 0)
    server["served"]["/induce/antonyms.json"] = ii_file(100)  # the server recovers: the next run loads
    task = load_task(cfg, 0)
    assert len(task.train) == 32 and len(task.dev) == 32 and len(task.test) == 20
    assert task.train[0].text.startswith("word0") and task.test[0].answers == ("drow0",)


def test_downloads_are_kept_under_the_runs_cache_dir(server, tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTRL_CACHE", str(tmp_path / "default"))
    cfg = ii_config(server["url"])
    server["served"] = {"/induce/antonyms.json": ii_file(100), "/execute/antonyms.json": ii_file(20)}
    cache = tmp_path / "cache"
    task = load_task(cfg, 0, cache_dir=str(cache))
    cached = cache / "data" / "instruction_induction" / "induce" / "antonyms.json"
    assert cached.read_bytes() == ii_file(100) and sorted(p.name for p in cache.rglob("*") if p.is_file()) == ["antonyms.json"] * 2
    assert not (tmp_path / "default").exists()
    before = server["requests"]
    assert load_task(cfg, 0, cache_dir=str(cache)).test == task.test and server["requests"] == before  # from the cache


def test_concurrent_downloads_of_one_file_do_not_collide(server, tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTRL_CACHE", str(tmp_path / "cache"))  # the default cache_dir
    cfg = ii_config(server["url"])
    body = ii_file(60, pad=20_000)  # ~1.2 MB: writes that take a while
    server["served"] = {"/induce/antonyms.json": body}
    jobs = 6
    server["barrier"] = threading.Barrier(jobs)  # every job's answer arrives at once
    for _ in range(3):
        with ThreadPoolExecutor(jobs) as pool:
            paths = list(pool.map(lambda _: fetch(cfg, "induce"), range(jobs)))
        assert len(set(paths)) == 1 and paths[0].read_bytes() == body
        assert [p.name for p in paths[0].parent.iterdir()] == ["antonyms.json"]  # no temp file left behind
        paths[0].unlink()
