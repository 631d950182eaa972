"""Sweeps through a real SLURM scheduler (hydra/launcher=slurm, hydra-submitit-launcher): a 2-job
sweep of the embedded model goes through sbatch, and a job stopped at its time limit is requeued
(submitit's checkpoint protocol) and resumes from its checkpoints, each step run exactly once.

Needs a SLURM cluster that answers (`scripts/slurm_start.sh` starts a one-node one on this
machine; then export SLURM_CONF as it prints). Without one the tests skip, unless
PROMPTRL_REQUIRE_SLURM=1 (set in CI, where a skip would hide a break)."""

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY

pytestmark = pytest.mark.slow

# Two steps a job (32 training examples, 16 a step), on one CPU and 3 GB each: both jobs of a
# sweep fit a 2-CPU node at once. The launcher config's GPU-sized defaults cannot be met here.
RUN = ["experiment=cpu_demo", *TINY, "algo.batch_size=16"]
LAUNCHER = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=3"]
DRIVER_TIMEOUT_S = 1200


def slurm_problem() -> str | None:
    """Why no SLURM cluster can take jobs here, or None."""
    if shutil.which("sbatch") is None:
        return "sbatch not on PATH (apt-get install slurm-wlm munge; scripts/slurm_start.sh)"
    conf = os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")
    if not Path(conf).is_file():  # scontrol would retry for a minute
        return f"no slurm.conf at {conf} (SLURM_CONF); scripts/slurm_start.sh writes one and starts a cluster"
    try:
        r = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return f"scontrol ping did not answer in 20 s (SLURM_CONF={conf})"
    if r.returncode != 0 or "UP" not in r.stdout:
        return (f"no slurmctld answers (scontrol ping: {(r.stdout + r.stderr).strip()[:200]}; "
                f"SLURM_CONF={conf}); scripts/slurm_start.sh starts one")
    return None


@pytest.fixture(scope="module")
def slurm():
    problem = slurm_problem()
    if problem:
        if os.environ.get("PROMPTRL_REQUIRE_SLURM") == "1":
            pytest.fail(f"PROMPTRL_REQUIRE_SLURM=1 but {problem}")
        pytest.skip(f"no SLURM: {problem}")


def job_ids(sweep: Path) -> list[str]:
    """The SLURM jobs of a sweep, from submitit's folders: <array id>_<index>, or <job id> for a
    one-job sweep, each holding the job's pickled call (an array's own folder holds only its
    sbatch script)."""
    return sorted(p.parent.name for p in (sweep / ".submitit").glob("*/*_submitted.pkl")
                  if re.fullmatch(r"\d+(_\d+)?", p.parent.name))


class Driver:
    """`promptrl train -m ...` in the background; on exit its SLURM jobs and the driver itself are
    ended, so a failing test leaves nothing running (without accounting, submitit would wait for
    a killed job forever)."""

    def __init__(self, sweep: Path, *args: str, data: Path, env: dict | None = None):
        self.sweep = sweep
        full = {**os.environ, "PROMPTRL_DATA": str(data), "HF_HUB_OFFLINE": "1", **(env or {})}
        full.pop("HYDRA_FULL_ERROR", None)
        self.log = sweep.parent / f"{sweep.name}-driver.log"
        self.log_file = self.log.open("w")
        # sbatch exports this environment (PYTHONPATH, PROMPTRL_DATA, SLURM_CONF) to the jobs
        self.proc = subprocess.Popen([sys.executable, "-m", "promptrl.cli", "train", "-m", *args,
                                      f"hydra.sweep.dir={sweep}"], stdout=self.log_file, stderr=subprocess.STDOUT,
                                     env=full)

    def wait(self) -> int:
        try:
            return self.proc.wait(timeout=DRIVER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the sweep did not finish in {DRIVER_TIMEOUT_S} s; {self.output()[-3000:]}")

    def output(self) -> str:
        self.log_file.flush()
        return self.log.read_text()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        ids = sorted({j.split("_")[0] for j in job_ids(self.sweep)})
        if ids:
            subprocess.run(["scancel", *ids], capture_output=True, timeout=60)
        self.log_file.close()


@pytest.fixture
def driver():
    started = []

    def start(*args, **kwargs):
        started.append(Driver(*args, **kwargs))
        return started[-1]

    yield start
    for d in started:
        d.close()


def steps(run: Path) -> list[int]:
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return [row["step"] for row in rows if "anchor" not in row]


def submitit_log(sweep: Path, job: str) -> str:
    return "".join(p.read_text() for p in sorted((sweep / ".submitit" / job).glob("*_log.*")))


def test_a_two_job_sweep_runs_through_sbatch(slurm, driver, tmp_path, shared_data):
    sweep = tmp_path / "sweep"
    d = driver(sweep, *RUN, "seed=0,1", *LAUNCHER, "hydra.launcher.timeout_min=30", data=shared_data)
    assert d.wait() == 0, d.output()[-3000:]
    jobs = job_ids(sweep)
    assert len(jobs) == 2 and len({j.split("_")[0] for j in jobs}) == 1, jobs  # one SLURM array of two
    for j in jobs:
        log = submitit_log(sweep, j)  # written by the job, under SLURM
        assert f"Starting with JobEnvironment(job_id={j}," in log and "Job completed successfully" in log, log[-2000:]
    for seed in (0, 1):
        results = json.loads((sweep / str(seed) / "results.json").read_text())
        assert (results["seed"], results["steps"]) == (seed, 2)
        assert steps(sweep / str(seed)) == [0, 1]
    r = subprocess.run([sys.executable, "-m", "promptrl.cli", "report", str(sweep), "--no-plots"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    [row] = csv.DictReader((sweep / "report" / "report.csv").open())
    assert (row["task.name"], row["algo.name"], row["runs"], row["failed"], row["seeds"]) == ("sst2", "appo", "2", "0", "0 1")


def elapsed_s(job: str) -> float:
    """How long a running job has run (squeue's [D-]HH:MM:SS / MM:SS)."""
    text = subprocess.run(["squeue", "-h", "-j", job, "-o", "%M"], capture_output=True, text=True,
                          timeout=30).stdout.strip()
    days, _, clock = text.rpartition("-")
    parts = [int(x) for x in clock.split(":")]
    seconds = sum(v * 60 ** i for i, v in enumerate(reversed(parts)))
    return seconds + 86400 * int(days or 0)


def test_a_job_stopped_at_its_time_limit_is_requeued_and_resumes(slurm, driver, tmp_path, shared_data):
    """The job's second step stalls (PROMPTRL_STALL_AT, promptrl/faults.py: a step slower than the
    time limit, whatever this machine's speed). Once its first checkpoint is written the test
    cuts the job's time limit to a minute from now; SLURM then sends submitit's USR2
    (signal_delay_s before the limit), submitit requeues the job and it resumes from that
    checkpoint. With timeout_min <= 10, submitit counts every such signal as a time-out, not a
    preemption. The requeued job gets its ten minutes back and finishes."""
    sweep = tmp_path / "sweep"
    run = sweep / "0"
    d = driver(sweep, *RUN, "seed=0", *LAUNCHER, "hydra.launcher.timeout_min=10", "hydra.launcher.signal_delay_s=45",
               data=shared_data, env={"PROMPTRL_STALL_AT": "mid-step:2"})
    deadline = time.time() + 900
    while not list((run / "checkpoints").glob("ckpt-*.pt")):
        assert d.proc.poll() is None, d.output()[-3000:]
        assert time.time() < deadline, "no checkpoint within 900 s"
        time.sleep(2)
    [job] = job_ids(sweep)
    limit_min = math.ceil(elapsed_s(job) / 60) + 1
    r = subprocess.run(["scontrol", "update", f"JobId={job}", f"TimeLimit={limit_min}"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # Once requeued, the job gets its ten minutes back: the resumed run is not cut short again
    # however slow this machine is.
    cut = time.time()
    while f"Requeued job {job}" not in submitit_log(sweep, job):
        assert d.proc.poll() is None, d.output()[-3000:]
        assert time.time() < cut + 300, "not requeued within 5 minutes of the cut"
        time.sleep(1)
    subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=10"], capture_output=True, timeout=60)

    assert d.wait() == 0, d.output()[-3000:]
    log = submitit_log(sweep, job)
    assert "Caught signal SIGUSR2" in log and "this job is timed-out" in log, log[-3000:]
    assert log.count(f"Requeued job {job}") == 1, log[-3000:]
    assert "Job completed successfully" in log
    train_log = (run / "train.log").read_text()
    assert train_log.count(f"resuming from {run / 'checkpoints' / 'ckpt-0000001.pt'}") == 1, train_log[-3000:]
    assert steps(run) == [0, 1]  # the step cut short ran again from the checkpoint, its row once
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 2
