"""Kill-and-resume: `promptrl train` on the embedded model is SIGKILLed at named points
(PROMPTRL_CRASH_AT, see promptrl/faults.py), resumed, and compared with an uninterrupted run of
the same seed: same queue and results, the same metrics rows with no step twice or missing, and
never a torn checkpoint loaded."""

import json
import signal

import pytest
import torch

from conftest import TINY, run_cli

pytestmark = pytest.mark.slow

SMALL_DEMO = ["experiment=cpu_demo", *TINY]
# The same schedule with anchored GRPO: two groups of two a step, one forward and backward, no value head.
GRPO_DEMO = [*SMALL_DEMO, "algo=grpo", "algo.group_size=2", "algo.groups_per_step=2"]


def train(shared_data, *args, crash_at=None):
    return run_cli("train", *args, data=shared_data, env={"HF_HUB_OFFLINE": "1", "PROMPTRL_CRASH_AT": crash_at})


def metrics(run):
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    # Times differ, and so does the work the target did: a resumed run finds the scorings of the
    # steps it repeats in the prompt-score cache (cache counts, tokens processed). Everything else
    # of the cost ledger — calls, the agent's sampled and trained tokens — is the uninterrupted run's.
    return [{k: v for k, v in r.items() if not k.startswith(("time_", "cache_")) and k not in TARGET_WORK} for r in rows]


TARGET_WORK = {"target_tokens", "target_input_tokens"}


def comparable(results):
    drop = {"wall_time_s", "train_time_s", "cache_hits", "cache_misses", "target_tokens"}
    out = {k: v for k, v in results.items() if k not in drop}
    if "cost" in out:
        out["cost"] = {k: v for k, v in out["cost"].items() if not k.startswith("time_") and k not in TARGET_WORK}
    return out


@pytest.fixture(scope="module")
def references(tmp_path_factory, shared_data):
    """The uninterrupted run of each schedule, made once per module when a test first asks."""
    runs = {}

    def get(args):
        key = tuple(args)
        if key not in runs:
            run = tmp_path_factory.mktemp("reference") / "run"
            r = train(shared_data, *args, f"hydra.run.dir={run}")
            assert r.returncode == 0, r.stderr[-3000:]
            runs[key] = run
        return runs[key]

    return get


@pytest.fixture(scope="module")
def reference(references):
    return references(SMALL_DEMO)


@pytest.mark.parametrize("demo, crash_at, corrupt_newest", [
    (SMALL_DEMO, "mid-step:3", False),  # during the 3rd PPO step, after scoring, before the update
    (SMALL_DEMO, "mid-step:3", True),  # the same, and the newest checkpoint torn as if the disk lied
    (SMALL_DEMO, "mid-checkpoint-write:3", False),  # half of the 3rd checkpoint written
    (SMALL_DEMO, "between-dev-and-test:1", False),  # during the final evaluation
    (GRPO_DEMO, "mid-step:3", False),  # anchored GRPO: adapter, anchor and optimizer resume, no value head
    (GRPO_DEMO, "mid-checkpoint-write:3", False),
], ids=["appo-mid-step", "appo-mid-step-torn", "appo-mid-checkpoint", "appo-final-eval", "grpo-mid-step",
        "grpo-mid-checkpoint"])
def test_killed_run_resumes_to_the_uninterrupted_result(demo, crash_at, corrupt_newest, references, shared_data, tmp_path):
    reference = references(demo)
    run = tmp_path / "run"
    r = train(shared_data, *demo, f"hydra.run.dir={run}", crash_at=crash_at)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
    assert not (run / "results.json").exists()
    ckpts = sorted((run / "checkpoints").glob("ckpt-*.pt"))
    for c in ckpts:  # whatever survived a kill is whole
        torch.load(c, map_location="cpu", weights_only=True)  # plain data: no code runs on load
    if crash_at.startswith("mid-checkpoint-write"):
        assert [c.name for c in ckpts] == ["ckpt-0000001.pt", "ckpt-0000002.pt"]
        assert list((run / "checkpoints").glob(".ckpt-*.tmp"))  # the half-written temp file, never loaded
    if corrupt_newest:
        ckpts[-1].write_bytes(ckpts[-1].read_bytes()[:1000])

    # resume= continues in the run's own directory (log and .hydra/ record there) and says which
    # overrides it does not apply
    r = train(shared_data, f"resume={run}", "algo.epochs=7", "logger.progress=false")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ignored: algo.epochs=7" in r.stdout + r.stderr
    assert list((run / ".hydra").glob("resume-*/overrides.yaml"))
    assert "resuming run" in (run / "train.log").read_text()
    if corrupt_newest:
        assert "is unreadable" in r.stdout + r.stderr

    got, want = metrics(run), metrics(reference)
    steps = [row["step"] for row in got if "anchor" not in row]
    assert steps == sorted(set(steps)) == list(range(len(steps)))  # no step twice, none missing
    assert got == want
    if demo is GRPO_DEMO:
        state = torch.load(sorted((run / "checkpoints").glob("ckpt-*.pt"))[-1], map_location="cpu", weights_only=False)
        assert state["extra"]["value_heads"] is None and "value_loss" not in got[0]
        assert all(len(row["prompts"]) == 4 for row in got if "anchor" not in row)  # 2 groups x 2
    assert comparable(json.loads((run / "results.json").read_text())) == \
        comparable(json.loads((reference / "results.json").read_text()))
    assert not list((run / "checkpoints").glob(".ckpt-*.tmp"))  # stale temp files are cleaned up


def test_sigterm_mid_run_checkpoints_the_finished_step_and_the_same_command_resumes(reference, shared_data, tmp_path):
    """A `kill` between periodic checkpoints (here: none before the end) loses no finished step:
    the step in progress is completed and checkpointed, exit code 143, and launching the same
    command again continues to the uninterrupted result."""
    import os
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    args = [a for a in SMALL_DEMO if not a.startswith("checkpoint_every=")] + ["checkpoint_every=100", f"hydra.run.dir={run}"]
    env = {**os.environ, "PROMPTRL_DATA": str(shared_data), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "promptrl.cli", "train", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    rows = run / "metrics.jsonl"
    deadline = time.time() + 600
    while not (rows.exists() and rows.read_text().count("\n") >= 1) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # during step 1 of 4
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "promptrl: stopped by SIGTERM after step" in stderr
    assert not (run / "results.json").exists() and not (run / "failed.json").exists()
    (ckpt,) = (run / "checkpoints").glob("ckpt-*.pt")  # only the one the signal asked for
    done = [r for r in metrics(run) if "anchor" not in r]
    assert int(ckpt.stem.split("-")[1]) == len(done) >= 2  # the step in progress was finished too

    r = train(shared_data, *args)  # the same command, no resume=
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from" in r.stdout + r.stderr
    assert metrics(run) == metrics(reference)
    assert comparable(json.loads((run / "results.json").read_text())) == \
        comparable(json.loads((reference / "results.json").read_text()))
