"""Offline safety: with HF_HUB_OFFLINE=1 and WANDB_MODE=offline no Python code in the run opens a
network connection (sockets are blocked and every attempt recorded), and credentials in the
environment never reach the run directory."""

import os
import subprocess
import sys

import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow

# Loaded by Python at start-up from PYTHONPATH: refuses and records any connection or name lookup
# that is not to this machine (wandb's own service talks to it over loopback/unix sockets).
GUARD = '''
import os, socket
LOG = os.environ["PROMPTRL_SOCKET_LOG"]
LOCAL = {None, "", "localhost", "127.0.0.1", "::1", "0.0.0.0"}

def _record(what):
    with open(LOG, "a") as f:
        f.write(what + "\\n")

_connect = socket.socket.connect
def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOCAL:
        _record(f"connect {address!r}")
        raise OSError("network blocked by the offline test")
    return _connect(self, address)
socket.socket.connect = connect

_getaddrinfo = socket.getaddrinfo
def getaddrinfo(host, *args, **kwargs):
    if host not in LOCAL:
        _record(f"getaddrinfo {host!r}")
        raise socket.gaierror("name lookup blocked by the offline test")
    return _getaddrinfo(host, *args, **kwargs)
socket.getaddrinfo = getaddrinfo
'''

SECRETS = {"WANDB_API_KEY": "wandb-fake-key-0123456789abcdef0123456789abcdef",
           "HF_TOKEN": "hf_fakeTokenShouldNeverBeWritten123", "OPENAI_API_KEY": "sk-fake-openai-key-never-written"}


def guarded_run(tmp_path, args, data):
    guard_dir = tmp_path / "guard"
    guard_dir.mkdir()
    (guard_dir / "sitecustomize.py").write_text(GUARD)
    log = tmp_path / "sockets.log"
    env = {**SECRETS, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PROMPTRL_DATA": data,
           "PROMPTRL_SOCKET_LOG": str(log), "PYTHONPATH": os.pathsep.join([str(guard_dir), os.environ.get("PYTHONPATH", "")])}
    r = run_cli(*args, env=env)
    return r, (log.read_text().splitlines() if log.exists() else [])


def test_guard_really_blocks(tmp_path):
    r, attempts = guarded_run(tmp_path, ["--help"], None)
    code = "import urllib.request; urllib.request.urlopen('https://huggingface.co', timeout=5)"
    env_check = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                               env={**os.environ, "PYTHONPATH": str(tmp_path / "guard"),
                                    "PROMPTRL_SOCKET_LOG": str(tmp_path / "sockets.log")})
    assert env_check.returncode != 0
    assert "huggingface.co" in (tmp_path / "sockets.log").read_text()


def test_offline_training_makes_no_network_call_and_writes_no_secret(tmp_path, shared_data):
    run = tmp_path / "run"
    r, attempts = guarded_run(tmp_path, [
        "train", "experiment=compare_sst2", "algo=ape", "budget.target_calls=16", "algo.eval_examples=8",
        "algo.prompts_per_step=2", "agent.max_new_tokens=8", "task.max_test_examples=8", "logger=wandb",
        "logger.progress=false", f"hydra.run.dir={run}"], shared_data)
    assert r.returncode == 0, r.stderr[-3000:]
    assert attempts == []
    assert list((run / "wandb").glob("offline-run-*"))
    leaked = [(str(p), name) for p in run.rglob("*") if p.is_file()
              for name, secret in SECRETS.items() if secret.encode() in p.read_bytes()]
    assert leaked == []


def test_hub_task_offline_fails_fast_with_a_hint(tmp_path):
    r, attempts = guarded_run(tmp_path, ["eval", "task=sst2", f"hydra.run.dir={tmp_path / 'run'}"], None)
    assert r.returncode == 2
    errors = [l for l in r.stderr.splitlines() if l.startswith("promptrl: error:")]
    assert len(errors) == 1 and "set PROMPTRL_DATA or task.data_dir" in errors[0], r.stderr[-2000:]
    assert attempts == []
