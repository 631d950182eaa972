import json
import subprocess
from types import SimpleNamespace

from promptrl.prompt_queue import PromptQueue
from promptrl.rundir import redact, save_run_info
from promptrl.tracking import Tracker, source_commit


def test_redact_hides_credentials_but_not_token_counts():
    cfg = {"target": {"batch_tokens": 16384, "api_key": "sk-123", "hf_token": "hf_abc"},
           "agent": {"max_new_tokens": 32}, "logger": {"wandb_password": "x", "project": "p"}}
    out = redact(cfg)
    assert out["target"]["batch_tokens"] == 16384 and out["agent"]["max_new_tokens"] == 32
    assert out["target"]["api_key"] == out["target"]["hf_token"] == out["logger"]["wandb_password"] == "<redacted>"
    assert out["logger"]["project"] == "p"


def test_tracker_resume_cuts_rows_after_the_checkpoint(tmp_path):
    t = Tracker(tmp_path, SimpleNamespace(wandb=False))
    for s in range(5):
        t.log({"step": s, "reward_mean": float(s)})
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "rew')  # torn last line from a kill
    Tracker(tmp_path, SimpleNamespace(wandb=False), resume_step=2)
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]


def test_prompt_queue_keeps_best_distinct_prompts():
    q = PromptQueue(2)
    q.offer("a", 1.0, 0)
    q.offer("b", 3.0, 0)
    q.offer("a", 5.0, 1)  # same text again: keeps its best reward, no duplicate
    q.offer("c", 2.0, 2)  # worse than both: dropped
    q.offer("b", 0.0, 3)  # a worse score for a known prompt does not lower it
    assert [(i["prompt"], i["reward"], i["step"]) for i in q.items] == [("a", 5.0, 1), ("b", 3.0, 0)]
    r = PromptQueue(1)
    r.load_state_dict(q.state_dict())
    assert r.items == q.items and r.size == 2


def test_wandb_offline_logs_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = SimpleNamespace(wandb=True, project="promptrl-test", entity=None, group=None, tags=["t"], mode="offline")
    t = Tracker(tmp_path, cfg, config={"seed": 0})
    t.log({"step": 0, "reward_mean": 1.5})
    t.summary({"test_accuracy": 0.7})
    t.close()
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["reward_mean"] == 1.5


def test_source_commit_names_the_checkout_and_flags_changed_code_only(tmp_path):
    """A run records which code made it; edits to outputs/ or docs/ (a study writing into its own
    checkout) are not code changes, an edit under promptrl/ is."""
    assert source_commit(tmp_path) is None  # not a checkout: an installed wheel
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    for name in ("pyproject.toml", "promptrl/train.py", "outputs/study/README.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "c"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / "outputs/study/README.md").write_text("results\n")
    (tmp_path / "promptrl/new_untracked.py").write_text("y\n")
    assert source_commit(tmp_path) == head
    (tmp_path / "promptrl/train.py").write_text("changed\n")
    assert source_commit(tmp_path) == head + "+dirty"


def test_versions_json_records_packages_and_the_commit(tmp_path):
    from omegaconf import OmegaConf

    save_run_info(tmp_path, OmegaConf.create({"seed": 0}))
    versions = json.loads((tmp_path / "versions.json").read_text())
    assert versions["torch"] and "promptrl_commit" in versions
    assert versions["promptrl_commit"] == source_commit()  # this checkout's commit, or None for a wheel
