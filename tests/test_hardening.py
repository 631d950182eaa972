"""The run directory is safe to resume and share (issue 37): no code runs from a checkpoint, no
credential lands on disk, no run is silently restarted or written by two processes, and every
engine is closed whatever fails. Model-free unless marked slow; the server-backed resume is in
test_vllm.py."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from promptrl.checkpoint import load_latest_checkpoint, save_checkpoint
from promptrl.cli import CONF_DIR
from promptrl.errors import UserError
from promptrl.interrupts import Interrupted
from promptrl.rundir import (
    REDACTED,
    RunLock,
    atomic_write_text,
    earlier_launch,
    redact,
    restore_secrets,
    save_run_info,
    scrub_hydra_files,
    secret_on_command_line,
    write_json,
)
from promptrl.tracking import Tracker, wandb_run_id

from conftest import REPO, TINY, run_cli

SECRET = "sk-do-not-leak-4f1c9e"


def composed(*overrides, config="train"):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose(config, overrides=list(overrides))


# --- 1. checkpoints are never unpickled -----------------------------------------------------------
class WritesAMarker:
    """Unpickling this runs os.system: what a planted .pt would do with weights_only=False."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(directory: Path, marker: Path, step: int = 3) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"ckpt-{step:07d}.pt"
    torch.save({"step": step, "payload": WritesAMarker(marker)}, path)
    return path


def test_a_planted_checkpoint_is_refused_and_its_code_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    planted = plant(tmp_path / "checkpoints", marker)
    with pytest.raises(UserError, match=r"none of the 1 checkpoints .* can be loaded .*nothing was changed"):
        load_latest_checkpoint(tmp_path / "checkpoints")
    assert not marker.exists()
    assert planted.exists()  # left for a person to look at


def test_the_package_never_unpickles():
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "promptrl").rglob("*.py") if "weights_only=False" in p.read_text()]
    assert offenders == []


def test_a_real_checkpoint_loads_with_weights_only(tmp_path):
    import random

    rng = random.Random(3)
    state = {"step": 2, "rng_python": rng.getstate(), "rng_torch": torch.get_rng_state(), "rng_cuda": None,
             "queue": {"size": 5, "items": [{"prompt": "p", "reward": 1.5, "step": 0}]},
             "extra": {"lora": {"a": torch.ones(2)}, "optimizer": torch.optim.Adam([torch.nn.Parameter(torch.ones(1))]).state_dict(),
                       "anchor_history": [{"anchor": "keep", "diff": 0.0}]}}
    save_checkpoint(tmp_path, 2, state)
    loaded = load_latest_checkpoint(tmp_path)
    assert loaded["step"] == 2 and loaded["queue"] == state["queue"]
    restored = random.Random()
    restored.setstate(loaded["rng_python"])
    assert restored.random() == rng.random()


# --- 5. no silent restart; rotation never deletes newer files ---------------------------------------
def test_an_unreadable_newer_checkpoint_never_makes_rotation_delete_new_ones(tmp_path):
    save_checkpoint(tmp_path, 1, {"step": 1})
    (tmp_path / "ckpt-0000009.pt").write_bytes(b"torn")  # unreadable, higher step number
    assert load_latest_checkpoint(tmp_path)["step"] == 1  # falls back, sets the torn one aside
    assert (tmp_path / "ckpt-0000009.pt.unreadable").exists()
    for step in (2, 3, 4):
        save_checkpoint(tmp_path, step, {"step": step})
    assert sorted(p.name for p in tmp_path.glob("ckpt-*.pt")) == ["ckpt-0000003.pt", "ckpt-0000004.pt"]
    assert load_latest_checkpoint(tmp_path)["step"] == 4


def test_rotation_leaves_a_newer_checkpoint_of_another_process_alone(tmp_path):
    save_checkpoint(tmp_path, 7, {"step": 7})
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"step": step})
    assert {p.name for p in tmp_path.glob("ckpt-*.pt")} >= {"ckpt-0000003.pt", "ckpt-0000007.pt"}


def saved_run(directory: Path, *overrides) -> Path:
    cfg = composed("algo=manual", *overrides)
    save_run_info(directory, cfg)
    return directory


def test_an_unloadable_resume_exits_with_one_line_and_changes_nothing(tmp_path):
    run = saved_run(tmp_path / "run")
    rows = '{"step": 0, "reward_mean": 1.0}\n{"step": 1, "reward_mean": 2.0}\n'
    (run / "metrics.jsonl").write_text(rows)
    marker = tmp_path / "pwned"
    plant(run / "checkpoints", marker, step=1)
    (run / "checkpoints" / "ckpt-0000002.pt").write_bytes(b"torn")
    before = sorted(p.name for p in run.rglob("*"))
    for args in ([f"resume={run}"], ["algo=manual", f"hydra.run.dir={run}"]):  # asked for, and a relaunched job
        r = run_cli("train", *args, env={"HF_HUB_OFFLINE": "1"}, timeout=300)
        assert r.returncode == 2, r.stderr[-2000:]
        assert "none of the 2 checkpoints" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert (run / "metrics.jsonl").read_text() == rows
        assert not marker.exists()
        assert not (run / "results.json").exists()
    after = sorted(p.name for p in run.rglob("*") if ".hydra" not in p.parts and p.name != "train.log")
    assert [p for p in after if not p.startswith(".promptrl")] == [p for p in before if not p.startswith(".promptrl")]


def test_a_restart_without_checkpoints_keeps_the_earlier_metrics_aside(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\n')
    Tracker(tmp_path, SimpleNamespace(wandb=False))
    assert (tmp_path / "metrics-earlier-1.jsonl").read_text() == '{"step": 0}\n'
    assert not (tmp_path / "metrics.jsonl").exists()


# --- 2. secrets -----------------------------------------------------------------------------------
@pytest.mark.parametrize("override", [
    f"target.server.api_key={SECRET}", f"+logger.aws_secret_access_key={SECRET}", f"target.server.url=http://me:{SECRET}@host/v1",
    f"target.chat.api_key='{SECRET}'",
])
def test_a_literal_secret_on_the_command_line_is_refused_without_printing_it(override):
    line = secret_on_command_line(["seed=1", override])
    assert line and SECRET not in line and "oc.env" in line


@pytest.mark.parametrize("override", [
    "target.server.api_key=${oc.env:MY_KEY}", "target.server.api_key=null", "target.batch_tokens=4096",
    "agent.max_new_tokens=8", "target.server.url=http://host:8000/v1",
])
def test_references_to_the_environment_and_token_counts_pass(override):
    assert secret_on_command_line([override]) is None


def test_redaction_covers_credential_names_and_urls():
    cfg = {"a": {"aws_secret_access_key": "x", "access_key": "y", "db_password": "z", "hf_token": "t", "max_new_tokens": 8,
                 "batch_tokens": 9, "url": f"http://user:{SECRET}@host:1/v1", "api_key": None}}
    out = redact(cfg)["a"]
    assert out["aws_secret_access_key"] == out["access_key"] == out["db_password"] == out["hf_token"] == REDACTED
    assert out["max_new_tokens"] == 8 and out["batch_tokens"] == 9 and out["api_key"] is None
    assert out["url"] == f"http://{REDACTED}@host:1/v1"


def test_the_cli_refuses_a_secret_before_any_directory_exists(tmp_path):
    run = tmp_path / "run"
    r = run_cli("eval", f"target.server.api_key={SECRET}", f"hydra.run.dir={run}", timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert SECRET not in r.stdout + r.stderr
    assert not run.exists()


def test_hydra_records_of_a_config_file_secret_are_scrubbed(tmp_path):
    hydra = tmp_path / ".hydra"
    hydra.mkdir()
    (hydra / "config.yaml").write_text(OmegaConf.to_yaml({"target": {"server": {"api_key": SECRET, "url": "${oc.env:U}"},
                                                                      "other": {"api_key": "${oc.env:K}"}}}))
    (hydra / "overrides.yaml").write_text(OmegaConf.to_yaml([f"x.password={SECRET}", "seed=1"]))
    scrub_hydra_files(tmp_path)
    text = (hydra / "config.yaml").read_text() + (hydra / "overrides.yaml").read_text()
    assert SECRET not in text and "${oc.env:K}" in text and "seed=1" in text


def test_resume_takes_credentials_from_the_environment_not_the_saved_placeholder():
    saved = {"target": {"server": {"api_key": REDACTED, "url": "u"}}, "seed": 1}
    current = {"target": {"server": {"api_key": "${oc.env:OPENAI_API_KEY,null}", "url": "v"}}, "seed": 2}
    assert restore_secrets(saved, current) == {"target": {"server": {"api_key": "${oc.env:OPENAI_API_KEY,null}", "url": "u"}},
                                               "seed": 1}


@pytest.mark.slow
def test_a_secret_from_the_environment_reaches_no_file_of_the_run_nor_wandb(tmp_path, shared_data):
    run = tmp_path / "run"
    r = run_cli("train", "algo=manual", *[a for a in TINY if not a.startswith(("algo.", "agent."))],
                "target.server.api_key=${oc.env:MY_SERVER_KEY}", "target.server.url=${oc.env:MY_URL}",
                "logger=wandb", f"hydra.run.dir={run}", data=shared_data,
                env={"MY_SERVER_KEY": SECRET, "MY_URL": f"http://u:{SECRET}@127.0.0.1:9/v1", "WANDB_MODE": "offline",
                     "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert list((run / "wandb").glob("offline-run-*"))
    leaks = [str(p) for p in run.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaks == [] and SECRET not in str(run) and SECRET not in r.stdout + r.stderr
    assert OmegaConf.load(run / "config_resolved.yaml").target.server.api_key == REDACTED


# --- 6. one process per run directory --------------------------------------------------------------
def test_a_second_process_on_a_locked_run_directory_exits_with_one_line(tmp_path):
    run = tmp_path / "run"
    lock = RunLock(run)
    try:
        r = run_cli("eval", f"hydra.run.dir={run}", timeout=120)
        assert r.returncode == 2, r.stderr[-2000:]
        line = r.stderr.strip()
        assert len(line.splitlines()) == 1 and f"pid {os.getpid()}" in line and "in use by another promptrl process" in line
    finally:
        lock.release()
    RunLock(run).release()  # free again once the holder let go


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    code = f"from promptrl.rundir import RunLock; RunLock(__import__('pathlib').Path({str(tmp_path)!r})); import os; os._exit(0)"
    subprocess.run([sys.executable, "-c", code], check=True)
    RunLock(tmp_path).release()


# --- 7. predictions of one prompt and target only ----------------------------------------------------
def test_predict_refuses_rows_of_another_prompt_or_target(tmp_path):
    from promptrl.predict import check_identity, predictions_identity
    from promptrl.tasks import Task

    task = Task(name="toy", kind="classification", template="{prompt} {input}", label_words=[" no", " yes"],
                metric="accuracy", manual_prompt="", train=[], dev=[], test=[], label_names=["no", "yes"])
    cfg = composed("task=sst2", config="predict")
    first = predictions_identity(cfg, task, "Is it good?")
    check_identity(tmp_path, first)
    check_identity(tmp_path, first)  # the same prompt and target again: fine
    with pytest.raises(UserError, match="holds predictions of another prompt; predict into a new run directory"):
        check_identity(tmp_path, predictions_identity(cfg, task, "Is it bad?"))
    other_target = composed("task=sst2", "target=gemma3-270m", config="predict")
    with pytest.raises(UserError, match="another target"):
        check_identity(tmp_path, predictions_identity(other_target, task, "Is it good?"))
    moved_server = composed("task=sst2", "target.server.url=http://elsewhere:1/v1", "target.server.timeout_s=5", config="predict")
    check_identity(tmp_path, predictions_identity(moved_server, task, "Is it good?"))  # transport only


# --- 8. durability --------------------------------------------------------------------------------------
def test_renames_are_made_durable_by_fsyncing_the_directory(tmp_path, monkeypatch):
    synced_dirs = []
    real = os.fsync

    def spy(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            synced_dirs.append(os.fstat(fd).st_ino)
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    atomic_write_text(tmp_path / "a.txt", "x")
    save_checkpoint(tmp_path / "ck", 1, {"step": 1})
    assert tmp_path.stat().st_ino in synced_dirs and (tmp_path / "ck").stat().st_ino in synced_dirs


def test_cuda_rng_is_restored_only_for_devices_that_exist(monkeypatch):
    from promptrl.algos import base

    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append(device))
    base.restore_cuda_rng([torch.zeros(4, dtype=torch.uint8)] * 8)  # checkpointed on 8 GPUs
    assert restored == [0]


# --- 9. transport settings are not a run's identity ----------------------------------------------------
def test_a_relaunch_with_another_server_url_is_the_same_run(tmp_path):
    cfg = composed("target.backend=server", "target.server.url=http://node-1:8000/v1")
    save_run_info(tmp_path, cfg)
    write_json(tmp_path / "results.json", {"test_accuracy": 0.5})
    moved = composed("target.backend=server", "target.server.url=http://node-7:8000/v1", "target.server.timeout_s=30",
                     "target.server.concurrency=2")
    assert earlier_launch(tmp_path, moved) == "finished"
    other_model = composed("target.backend=server", "target.server.served_model=another")
    with pytest.raises(UserError, match="differs at target.server.served_model"):
        earlier_launch(tmp_path, other_model)


# --- 10. one wandb run per run directory -------------------------------------------------------------
def test_wandb_ids_tell_apart_directories_that_end_alike(tmp_path):
    tail = "x" * 70
    a, b = tmp_path / "sweep_a" / tail, tmp_path / "sweep_b" / tail
    assert wandb_run_id(a) != wandb_run_id(b) and wandb_run_id(a) == wandb_run_id(a)
    assert len(wandb_run_id(a)) <= 64


# --- 11. everything is closed, whatever fails -------------------------------------------------------------
class Recorder:
    def __init__(self, name, log, fail=False):
        self.name, self.log, self.fail = name, log, fail

    def close(self):
        self.log.append(self.name)
        if self.fail:
            raise RuntimeError(f"{self.name} failed to close")


def test_every_engine_is_closed_when_one_close_fails(monkeypatch, tokenizer, tiny_model):
    import promptrl.engines as engines
    import promptrl.scoring as scoring
    from promptrl.agent import Agent

    closed = []
    monkeypatch.setattr(scoring, "build_scorer", lambda *a, **k: Recorder("scorer", closed, fail=True))
    monkeypatch.setattr("promptrl.models.load_model", lambda cfg, cache_dir: (tiny_model, tokenizer))
    monkeypatch.setattr(Agent, "close", lambda self: closed.append("agent"))
    monkeypatch.setattr(engines, "check_agent_backend", lambda cfg, needs_agent=True: None)
    cfg = composed("agent.lora_r=2", "agent.target_modules=[q_proj,v_proj]")
    with pytest.raises(RuntimeError, match="scorer failed to close"):
        with ExitStack() as stack:
            engines.open_models(cfg, None, stack, needs_agent=True)
            raise ValueError("training failed")
    assert sorted(closed) == ["agent", "scorer"]


def test_wandb_ends_failed_on_an_error_and_finished_on_a_graceful_stop(tmp_path):
    finished = []
    for kind in (RuntimeError("boom"), Interrupted(15, "stopped"), None):
        t = Tracker(tmp_path, SimpleNamespace(wandb=False))
        t.wandb = SimpleNamespace(finish=lambda exit_code=0: finished.append(exit_code))
        with pytest.raises(type(kind)) if kind else ExitStack():
            with ExitStack() as stack:
                stack.push(t.close_on_exit)
                if kind:
                    raise kind
    assert finished == [1, 0, 0]


# --- 12. a vLLM target beside the agent's training copy must leave it room --------------------------------
def test_a_target_engine_that_leaves_the_agent_no_room_is_refused_before_it_starts():
    from promptrl.engines import check_gpu_memory

    gpu0, gpu1 = torch.device("cuda", 0), torch.device("cuda", 1)
    cfg = composed("target.backend=vllm")  # agent on transformers, target engine at 0.9 of the GPU
    GiB = 2**30
    with pytest.raises(UserError, match=r"target.vllm.gpu_memory_utilization=0.9 leaves 8.0 GiB .* needs about 20.0 GiB; "
                                        r"expected at most 0.75"):
        check_gpu_memory(cfg, (gpu0, gpu0), total_bytes=80 * GiB, agent_bytes=20 * GiB)
    check_gpu_memory(cfg, (gpu0, gpu1), total_bytes=80 * GiB, agent_bytes=20 * GiB)  # a GPU each
    check_gpu_memory(composed("target.backend=vllm", "target.vllm.gpu_memory_utilization=0.7"), (gpu0, gpu0),
                     total_bytes=80 * GiB, agent_bytes=20 * GiB)
    check_gpu_memory(cfg, (gpu0, gpu0), needs_agent=False, total_bytes=80 * GiB, agent_bytes=20 * GiB)  # eval: no agent


def test_the_training_copy_estimate_counts_the_real_agent_on_the_meta_device():
    from promptrl.engines import training_copy_bytes

    cfg = composed("agent.dtype=float32")
    need = training_copy_bytes(cfg)
    params = 134_515_008  # SmolLM2-135M
    assert need == int(params * 4 * 1.25) + 2 * 2**30


# --- 4. the SLURM vLLM server has a key of its own ---------------------------------------------------------
def test_the_slurm_server_script_generates_a_private_key_and_passes_it_out_of_sight(tmp_path):
    """The script's own steps (key file, its mode, how the key reaches the server); the server is
    a stand-in that records its arguments and environment, as vLLM itself serves a GPU model."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho \"$@\" > \"$SLURM_SUBMIT_DIR/args\"\necho \"$VLLM_API_KEY\" > \"$SLURM_SUBMIT_DIR/env_key\"\n")
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "SLURM_SUBMIT_DIR": str(tmp_path), "SLURM_JOB_ID": "42", "MODEL": "m"}
    subprocess.run(["bash", str(REPO / "scripts" / "slurm_vllm_server.sbatch")], env=env, check=True, capture_output=True)
    key_file = tmp_path / "vllm-server-42.key"
    key = key_file.read_text().strip()
    assert len(key) >= 32 and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert (tmp_path / "env_key").read_text().strip() == key  # the server requires it
    assert key not in (tmp_path / "args").read_text()  # not on the command line, where ps shows it
    assert (tmp_path / "vllm-server-42.url").read_text().startswith("http://")
    from promptrl.scoring.server import read_key_file

    assert read_key_file(str(key_file)) == key


def test_a_key_file_others_can_read_is_used_with_a_warning(tmp_path, caplog):
    from promptrl.scoring.server import read_key_file

    path = tmp_path / "k"
    path.write_text("abc\n")
    path.chmod(0o644)
    assert read_key_file(str(path)) == "abc"
    assert "can be read by other users" in caplog.text
    with pytest.raises(UserError, match="cannot be read"):
        read_key_file(str(tmp_path / "missing"))
