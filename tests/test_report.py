"""`promptrl report`, sweeps that survive a failing job, wandb grouping, and the launcher configs."""

import csv
import json
import math
import os
import statistics

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict

from promptrl.cli import CONF_DIR
from promptrl.config import register_configs
from promptrl.tracking import wandb_identity

from conftest import run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"




def assert_valid_png(path):
    import matplotlib.image

    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 2000, path
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0  # not a blank canvas


def fake_run(d, algo, seed, test, calls, rows):
    d.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"seed": seed, "task": {"name": "sst2"}, "algo": {"name": algo}}), d / "config_resolved.yaml")
    (d / "results.json").write_text(json.dumps({"algo": algo, "seed": seed, "test_accuracy": test, "paper_test_accuracy": test + 0.01,
                                                "manual_test_accuracy": 0.5, "target_calls": calls, "wall_time_s": 60.0}))
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_of_eval_runs_groups_by_task_and_draws_nothing(tmp_path):
    for i, (task, acc) in enumerate([("ii_sum", 0.25), ("ii_diff", 0.5)]):
        d = tmp_path / str(i)
        d.mkdir()
        OmegaConf.save(OmegaConf.create({"seed": 0, "task": {"name": task, "metric": "em"}}), d / "config_resolved.yaml")
        (d / "results.json").write_text(json.dumps({"algo": "eval", "test_accuracy": acc, "manual_test_accuracy": acc}))
    r = run_cli("report", str(tmp_path), "--by", "task.name,task.metric")
    assert r.returncode == 0, r.stderr
    rows = {row["task.name"]: row for row in csv.DictReader((tmp_path / "report" / "report.csv").open())}
    assert float(rows["ii_diff"]["test_accuracy_mean"]) == 0.5 and rows["ii_sum"]["task.metric"] == "em"
    assert not list((tmp_path / "report").glob("*.png"))  # no per-step rows: no empty plots


def test_report_groups_seeds_counts_failures_and_plots(tmp_path):
    sweep = tmp_path / "sweep"
    steps = lambda base: [{"step": s, "reward_mean": base + s, "best_reward": base + s, "target_calls": 64 * (s + 1),
                           "prompts": ["a", "b"]} for s in range(3)]
    fake_run(sweep / "0", "appo", 0, 0.70, 1024, steps(1) + [{"step": 2, "anchor": "update", "policy_dev_acc": 0.8}])
    fake_run(sweep / "1", "appo", 1, 0.80, 1000, steps(2) + [{"step": 2, "anchor": "rollback", "policy_dev_acc": 0.6}])
    fake_run(sweep / "2", "ape", 0, 0.65, 1024, steps(0))
    (sweep / "3").mkdir()
    OmegaConf.save(OmegaConf.create({"seed": 1, "task": {"name": "sst2"}, "algo": {"name": "ape"}}), sweep / "3" / "config_resolved.yaml")
    (sweep / "3" / "failed.json").write_text(json.dumps({"error": "boom"}))
    r = run_cli("report", str(sweep))
    assert r.returncode == 0, r.stderr
    rows = {row["algo.name"]: row for row in csv.DictReader((sweep / "report" / "report.csv").open())}
    assert float(rows["appo"]["test_accuracy_mean"]) == pytest.approx(0.75)
    assert float(rows["appo"]["test_accuracy_std"]) == pytest.approx(statistics.stdev([0.7, 0.8]))
    assert rows["appo"]["runs"] == "2" and rows["ape"]["runs"] == "1" and rows["ape"]["failed"] == "1"
    # t-interval of two seeds: 0.75 ± t(0.975, 1) · 0.0707 / √2 = 0.75 ± 0.635
    assert "0.750 [0.115, 1.385]" in (sweep / "report" / "report.md").read_text()
    for name in ("reward.png", "best_reward_vs_calls.png", "dev_accuracy.png"):
        assert_valid_png(sweep / "report" / name)
    by_seed = run_cli("report", str(sweep), "--by", "seed", "--no-plots", "--out", str(tmp_path / "by-seed"))
    assert by_seed.returncode == 0 and "seed" in (tmp_path / "by-seed" / "report.md").read_text()


def test_training_minutes_add_up_the_steps_and_dev_checks_a_run_logged(tmp_path):
    """best_reward_vs_time.png's axis: each row's time_step and time_check summed up to it, so a
    run resumed after a pause lines up with one that ran at once; runs without timed rows get
    no such plot."""
    from promptrl.report import load_run, plot

    rows = [{"step": 0, "reward_mean": 1.0, "best_reward": 1.0, "target_calls": 8, "time_step": 30.0},
            {"step": 1, "reward_mean": 2.0, "best_reward": 2.0, "target_calls": 16, "time_step": 60.0},
            {"step": 1, "anchor": "keep", "policy_dev_acc": 0.5, "time_check": 6.0},
            {"step": 2, "reward_mean": 1.5, "best_reward": 2.0, "target_calls": 24, "time_step": 24.0}]
    fake_run(tmp_path / "timed", "appo", 0, 0.7, 24, rows)
    run = load_run(tmp_path / "timed")
    assert [r["train_minutes"] for r in run.rows] == pytest.approx([0.5, 1.5, 1.6, 2.0])
    written = plot([run], ["algo.name"], tmp_path)
    assert tmp_path / "best_reward_vs_time.png" in written
    assert_valid_png(tmp_path / "best_reward_vs_time.png")
    fake_run(tmp_path / "untimed", "appo", 0, 0.7, 24, [{k: v for k, v in r.items() if not k.startswith("time")} for r in rows])
    (tmp_path / "out").mkdir()
    assert (tmp_path / "out" / "best_reward_vs_time.png") not in plot([load_run(tmp_path / "untimed")], ["algo.name"], tmp_path / "out")


def test_report_bad_arguments_are_one_line(tmp_path):
    r = run_cli("report", str(tmp_path / "nothing-here"))
    assert r.returncode == 2 and r.stderr.strip().startswith("promptrl: error: report:") and "matches no file" in r.stderr
    (tmp_path / "empty").mkdir()
    r = run_cli("report", str(tmp_path / "empty"))
    assert r.returncode == 2 and "no runs (results.json or failed.json)" in r.stderr


def test_report_help_states_the_whole_summary():
    r = run_cli("report", "--help")
    assert r.returncode == 0 and "against the manual or empty prompt, CSV/Markdown, plots." in " ".join(r.stdout.split())


@pytest.mark.slow
def test_multirun_then_report_on_the_embedded_model(tmp_path, shared_data):
    """2 algos x 2 seeds with a tiny budget, one extra job that fails; the sweep finishes the
    others, exits non-zero naming the failure, and the report's numbers are the runs' numbers."""
    sweep = tmp_path / "sweep"
    r = run_cli("train", "-m", "experiment=compare_sst2", "algo=manual,ape", "seed=0,1", "budget.target_calls=16",
                 "algo.queue_size=2", "agent.max_new_tokens=8", "task.max_test_examples=16",
                 f"hydra.sweep.dir={sweep}", env={"PROMPTRL_DATA": str(shared_data), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))]
    assert sorted((x["algo"], x["seed"]) for x in results) == [("ape", 0), ("ape", 1), ("manual", 0), ("manual", 1)]
    assert all(x["target_calls"] <= 16 + 4 * 16 for x in results)  # budget + at most one step

    failing = run_cli("train", "-m", "experiment=compare_sst2", "algo=manual", "seed=0", "task.data_dir=/no/such/dir,"
                       + str(shared_data), "task.max_test_examples=8", f"hydra.sweep.dir={tmp_path / 'failing'}",
                       env={"HF_HUB_OFFLINE": "1"})
    assert failing.returncode == 1 and "1 sweep job(s) failed" in failing.stderr and "/no/such/dir" in failing.stderr
    assert (tmp_path / "failing" / "0" / "failed.json").exists() and (tmp_path / "failing" / "1" / "results.json").exists()

    rep = run_cli("report", str(sweep))
    assert rep.returncode == 0, rep.stderr
    assert "sst2" in rep.stdout and "ape" in rep.stdout and "manual" in rep.stdout
    rows = {row["algo.name"]: row for row in csv.DictReader((sweep / "report" / "report.csv").open())}
    for algo in ("ape", "manual"):
        accs = [x["test_accuracy"] for x in results if x["algo"] == algo]
        assert float(rows[algo]["test_accuracy_mean"]) == pytest.approx(statistics.fmean(accs))
        assert float(rows[algo]["test_accuracy_std"]) == pytest.approx(statistics.stdev(accs))
        assert float(rows[algo]["target_calls_mean"]) == pytest.approx(statistics.fmean(x["target_calls"] for x in results if x["algo"] == algo))
    for name in ("reward.png", "best_reward_vs_calls.png", "dev_accuracy.png"):
        assert_valid_png(sweep / "report" / name)


def compose_train(overrides):
    register_configs()
    with initialize_config_dir(CONF_DIR, version_base="1.3", job_name="train"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def test_slurm_launcher_config_reaches_submitit(tmp_path, monkeypatch):
    cfg = compose_train(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=2",
                         "hydra.launcher.mem_gb=80", "hydra.launcher.timeout_min=90"])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.gpus_per_node, launcher.mem_gb, launcher.timeout_min) == ("gpu", 2, 80, 90)
    assert launcher.cpus_per_task == 8
    # Build the submitit executor exactly as SlurmLauncher.launch does, and read the sbatch script.
    import submitit
    from hydra.utils import instantiate
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    fake_bin = tmp_path / "bin"  # submitit refuses to build a SLURM executor where no `srun` is on PATH
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    plugin = instantiate(launcher)
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm", slurm_max_num_timeout=plugin.params["max_num_timeout"])
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in plugin.params.items()
                                  if k not in ("submitit_folder", "max_num_timeout")})
    sbatch = executor._executor._make_submission_file_text("echo hi", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=2", "#SBATCH --mem=80GB", "#SBATCH --time=90",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --job-name=promptrl-train"):
        assert line in sbatch, (line, sbatch)


def test_parallel_launcher_config():
    cfg = compose_train(["hydra/launcher=local_parallel", "hydra.launcher.n_jobs=4"])
    assert cfg.hydra.launcher._target_ == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert cfg.hydra.launcher.n_jobs == 4


def test_sweep_jobs_share_a_wandb_group_and_carry_tags():
    cfg = compose_train(["algo=ape", "seed=1"])
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.sweep.dir = "outputs/multirun/2026-11-22/10-00-00"
        cfg.hydra.job.override_dirname = "algo=ape,seed=1"
    HydraConfig.instance().set_config(cfg)
    try:
        config = OmegaConf.to_container(cfg, resolve=False)
        config.pop("hydra")
        identity = wandb_identity(config)
    finally:
        HydraConfig.instance().cfg = None
    assert identity == {"tags": ["sst2", "ape", "agent=smollm2-135m", "target=smollm2-135m"],
                        "group": "outputs/multirun/2026-11-22/10-00-00", "name": "algo=ape,seed=1"}


def test_t_interval_and_paired_comparison_match_hand_computed_values():
    from promptrl.stats import paired_comparison, t_interval

    # differences 0.10, 0.05, -0.01, 0.12: mean 0.065, sd 0.058023, se 0.029011, t(0.975, 3) = 3.182446
    mean, lo, hi = t_interval([0.10, 0.05, -0.01, 0.12])
    assert (mean, lo, hi) == pytest.approx((0.065, 0.065 - 0.092326, 0.065 + 0.092326), abs=1e-5)
    c = paired_comparison([0.80, 0.75, 0.70, 0.72], [0.70, 0.70, 0.71, 0.60])
    assert (c.n, c.wins, c.ties, c.losses) == (4, 3, 0, 1)
    assert c.mean_diff == pytest.approx(0.065) and (c.ci_low, c.ci_high) == pytest.approx((lo, hi))
    assert c.t_p == pytest.approx(0.1109, abs=5e-4)  # t = 2.2405 on 3 degrees of freedom
    assert c.wilcoxon_p == pytest.approx(0.25)  # exact: W- = 1 (the rank of |-0.01|); P(W <= 1) = 2/16, two-sided
    assert c.sign_p == pytest.approx(10 / 16)  # 3 wins of 4: P(X <= 1) + P(X >= 3) under Binomial(4, 1/2)
    assert math.isnan(t_interval([0.5])[1]) and math.isnan(paired_comparison([0.6, 0.6], [0.5, 0.5]).t_p)  # no spread: no p


def test_per_step_curves_are_drawn_over_instructions_sampled_so_arms_of_different_step_sizes_line_up():
    """reward/entropy/response-length curves use `samples`: the instructions drawn so far. An APPO
    step draws 4, a GRPO step 8; their 100th sample is step 25 for one and 12 for the other. Anchor
    checks and APE's UCB rounds draw none and get no point."""
    from pathlib import Path

    from promptrl.report import Run, curve, with_samples

    appo = with_samples([{"step": s, "entropy": 3.0 - s, "prompts": ["p"] * 4} for s in range(4)]
                        + [{"step": 3, "anchor": "keep", "prompts": ["best"], "entropy": 9.0}])
    grpo = with_samples([{"step": s, "entropy": 2.0 - s, "prompts": ["p"] * 8} for s in range(2)])
    assert [r.get("samples") for r in appo] == [4, 8, 12, 16, None] and [r["samples"] for r in grpo] == [8, 16]
    xs, mean, _, _ = curve([Run(Path("."), {}, {}, rows=appo)], "samples", "entropy")
    assert xs == [4, 8, 12, 16] and mean == [3.0, 2.0, 1.0, 0.0]  # the anchor row is no sample
    ape = with_samples([{"step": 0, "phase": "propose", "prompts": ["a", "b"]}, {"step": 1, "phase": "ucb", "prompts": ["a"]},
                        {"step": 2, "phase": "resample", "prompts": ["c"]}])
    assert [r.get("samples") for r in ape] == [2, None, 3]


def test_smoothed_curve_averages_each_run_over_its_trailing_steps_before_the_band():
    from pathlib import Path

    from promptrl.report import Run, curve

    def run(values):
        return Run(Path("."), {}, {}, rows=[{"step": i, "reward_mean": v} for i, v in enumerate(values)])

    runs = [run([0.0, 2.0, 4.0, 6.0]), run([2.0, 2.0, 2.0, 2.0])]
    xs, mean, lo, hi = curve(runs, "step", "reward_mean")
    assert xs == [0, 1, 2, 3] and lo == [0.0, 2.0, 2.0, 2.0] and hi == [2.0, 2.0, 4.0, 6.0]
    # window 2: run 1 becomes 0, 1, 3, 5 (the first step has only itself); run 2 stays 2
    xs, mean, lo, hi = curve(runs, "step", "reward_mean", smooth=2)
    assert mean == [1.0, 1.5, 2.5, 3.5] and lo == [0.0, 1.0, 2.0, 2.0] and hi == [2.0, 2.0, 3.0, 5.0]
    r = run_cli("report", "--smooth", "0", ".")
    assert r.returncode == 2 and "--smooth 0 must be a number of steps >= 1" in r.stderr


def test_report_compares_arms_paired_by_seed_from_the_hydra_overrides(tmp_path):
    """Study arms differ by a group chosen on the command line (+arm=...), not by algo.name: the
    report groups and pairs by it, and leaves out a seed only one arm has."""
    sweep = tmp_path / "study"
    accs = {"appo": [0.80, 0.75, 0.70, 0.72], "ppo": [0.70, 0.70, 0.71, 0.60, 0.9]}
    for arm, values in accs.items():
        for seed, acc in enumerate(values):
            d = sweep / f"+arm={arm},seed={seed}"
            rows = [{"step": s, "reward_mean": acc + s, "best_reward": acc + s, "target_calls": 64 * (s + 1),
                     "response_len": 30.0 - 10 * s, "entropy": 4.0 - s, "prompts": ["a", "b", "c", "d"]} for s in range(3)]
            fake_run(d, "appo", seed, acc, 1024, rows)
            (d / ".hydra").mkdir()
            (d / ".hydra" / "overrides.yaml").write_text(f"- +arm={arm}\n- seed={seed}\n- experiment=study_sst2\n")
    r = run_cli("report", str(sweep), "--by", "task.name,arm", "--compare", "arm=appo,ppo")
    assert r.returncode == 0, r.stderr
    report = {row["arm"]: row for row in csv.DictReader((sweep / "report" / "report.csv").open())}
    assert report["appo"]["runs"] == "4" and report["ppo"]["runs"] == "5"
    assert float(report["appo"]["test_accuracy_ci_low"]) == pytest.approx(0.7425 - 3.182446 * statistics.stdev(accs["appo"]) / 2, abs=1e-5)
    rows = {row["metric"]: row for row in csv.DictReader((sweep / "report" / "compare.csv").open())}
    test = rows["test_accuracy"]
    assert test["n"] == "4" and test["unpaired"] == "1" and test["task.name"] == "sst2"  # seed 4 has no appo run
    assert float(test["mean_diff"]) == pytest.approx(0.065) and float(test["t_p"]) == pytest.approx(0.1109, abs=5e-4)
    assert float(test["wilcoxon_p"]) == pytest.approx(0.25) and (test["wins"], test["losses"]) == ("3", "1")
    md = (sweep / "report" / "compare.md").read_text()
    assert "+0.065 [-0.027, +0.157]" in md and "3/0/1" in md
    for name in ("response_len.png", "entropy.png"):
        assert_valid_png(sweep / "report" / name)
    bad = run_cli("report", str(sweep), "--by", "arm", "--compare", "arm=appo,ape", "--no-plots")
    assert bad.returncode == 2 and "arm='ape' matches no run" in bad.stderr and "['appo', 'ppo']" in bad.stderr
    both = run_cli("report", str(sweep), "--by", "arm", "--compare", "arm=appo,ppo", "--compare", "arm=ppo,appo", "--no-plots")
    assert both.returncode == 0, both.stderr
    rows = list(csv.DictReader((sweep / "report" / "compare.csv").open()))
    diffs = {(r["a"], r["metric"]): float(r["mean_diff"]) for r in rows}
    assert len(rows) == 4 and diffs[("arm=ppo", "test_accuracy")] == pytest.approx(-diffs[("arm=appo", "test_accuracy")])  # test and paper acc, each pair
    md = (sweep / "report" / "compare.md").read_text()
    assert "arm=appo - arm=ppo [95% t]" in md and "arm=ppo - arm=appo [95% t]" in md and "-0.065 [-0.157, +0.027]" in md
    assert md.startswith("### paired by seed: arm=appo - arm=ppo")
    itself = run_cli("report", str(sweep), "--by", "arm", "--compare", "arm=appo,appo", "--no-plots")
    assert itself.returncode == 2 and "compares 'appo' with itself" in itself.stderr
    malformed = run_cli("report", str(sweep), "--compare", "arm=appo", "--no-plots")
    assert malformed.returncode == 2 and "must be KEY=A,B" in malformed.stderr


def test_report_pairs_the_selected_prompt_with_each_runs_own_baseline(tmp_path):
    """`--baseline empty`: each run's dev-selected prompt against the empty prompt scored in that
    run, per group; a template change gives an arm its own baseline, so the pairing is by run."""
    sweep = tmp_path / "study"
    arms = {"appo": ([0.80, 0.75, 0.70, 0.72], [0.70, 0.70, 0.71, 0.60]), "natural": ([0.84, 0.83], [0.81, 0.81])}
    for arm, (selected, empty) in arms.items():
        for seed, (acc, base) in enumerate(zip(selected, empty)):
            d = sweep / f"+arm={arm},seed={seed}"
            fake_run(d, "appo", seed, acc, 1024, [])
            results = json.loads((d / "results.json").read_text())
            (d / "results.json").write_text(json.dumps({**results, "empty_test_accuracy": base}))
            (d / ".hydra").mkdir()
            (d / ".hydra" / "overrides.yaml").write_text(f"- +arm={arm}\n- seed={seed}\n")
    r = run_cli("report", str(sweep), "--by", "arm", "--baseline", "empty", "--no-plots")
    assert r.returncode == 0, r.stderr
    rows = {row["arm"]: row for row in csv.DictReader((sweep / "report" / "vs_empty.csv").open())}
    appo, natural = rows["appo"], rows["natural"]
    # the same pairs as the hand-computed comparison above: +0.065, t p = 0.1109, Wilcoxon 0.25
    assert appo["n"] == "4" and float(appo["mean_diff"]) == pytest.approx(0.065)
    assert float(appo["t_p"]) == pytest.approx(0.1109, abs=5e-4) and float(appo["wilcoxon_p"]) == pytest.approx(0.25)
    # differences 0.03 and 0.02: mean 0.025, sd 0.0070711, t(0.975, 1) = 12.706205 -> half-width 0.063531
    assert float(natural["mean_diff"]) == pytest.approx(0.025) and float(natural["b_mean"]) == pytest.approx(0.81)
    assert float(natural["ci_low"]) == pytest.approx(0.025 - 0.063531, abs=1e-5) and natural["wins"] == "2"
    md = (sweep / "report" / "vs_empty.md").read_text()
    assert "empty prompt" in md and "+0.025 [-0.039, +0.089]" in md
    manual = run_cli("report", str(sweep), "--by", "arm", "--baseline", "manual", "--no-plots")
    assert manual.returncode == 0, manual.stderr
    assert [float(row["b_mean"]) for row in csv.DictReader((sweep / "report" / "vs_manual.csv").open())] == [0.5, 0.5]  # fake_run's
    from promptrl.report import compare_cells
    _, cells = compare_cells([{**appo, "n": 4, "a_mean": 0.7, "b_mean": 0.5, "mean_diff": 0.2, "ci_low": 0.1, "ci_high": 0.3,
                               "t_p": 0.0004, "wilcoxon_p": 0.125, "sign_p": 0.125}], ["arm"])
    assert cells[0][-3:] == ["<0.001", "0.125", "0.125"]  # a tiny p-value is not printed as 0.000
    bad = run_cli("report", str(sweep), "--baseline", "best", "--no-plots")
    assert bad.returncode == 2 and "--baseline 'best' is not a baseline; expected one of manual, empty" in bad.stderr


def test_comparisons_with_different_group_keys_share_one_csv(tmp_path):
    """compare.csv holds every comparison's rows; their group columns come first, and a column
    one comparison lacks is left empty."""
    from promptrl.report import Comparison, write_comparisons

    stats = {"metric": "test_accuracy", "a": "x", "b": "y", "a_mean": 0.7, "b_mean": 0.6, "unpaired": 0, "n": 3, "mean_diff": 0.1,
             "ci_low": 0.0, "ci_high": 0.2, "wins": 3, "ties": 0, "losses": 0, "t_p": 0.04, "wilcoxon_p": 0.25, "sign_p": 0.25}
    written = write_comparisons([Comparison([{"task.name": "sst2", **stats}], ["task.name"], "by task"),
                                 Comparison([{"arm": "appo", **stats}], ["arm"], "by arm")], tmp_path, "compare")
    rows = list(csv.DictReader(written[0].open()))
    assert list(rows[0])[:3] == ["task.name", "arm", "metric"]
    assert (rows[0]["task.name"], rows[0]["arm"], rows[1]["task.name"], rows[1]["arm"]) == ("sst2", "", "", "appo")
    md = written[1].read_text()
    assert "### by task" in md and "### by arm" in md and md.count("| +0.100 [+0.000, +0.200] |") == 2


def test_best_so_far_holds_each_run_at_its_best_to_the_end_so_the_mean_never_falls(tmp_path, monkeypatch):
    """Runs end at different target-call counts (a budget overshoot, a killed run, GEPA's own
    accounting): a run that stopped early must keep its best, not drop out of the mean (which made
    the mean fall where the best run ended). APE's logged best can fall (a UCB round lowers a
    mean); a best so far cannot."""
    from pathlib import Path

    from promptrl import report
    from promptrl.report import Run, best_so_far

    def run(points):
        return Run(Path("."), {}, {}, rows=[{"step": i, "target_calls": c, "best_reward": b} for i, (c, b) in enumerate(points)]
                   + [{"step": 1, "anchor": "keep", "target_calls": 150, "policy_dev_acc": 0.1}])

    runs = [run([(64, 5.0), (128, 9.0)]),  # the best run ends first, at 128 calls
            run([(38, 4.0), (76, 6.0), (114, 5.5), (400, 7.0)]),  # starts earlier; its logged best dips at 114
            run([(64, 6.0), (256, 6.5), (512, 6.6)])]
    xs, mean, lo, hi = best_so_far(runs)
    assert xs[0] == 64 and xs[-1] == 512  # from where every run has a value to the end of the longest
    assert all(b >= a for a, b in zip(mean, mean[1:])), mean
    assert all(b >= a for a, b in zip(lo, lo[1:])) and all(b >= a for a, b in zip(hi, hi[1:]))
    at = dict(zip(xs, mean))
    assert at[64] == pytest.approx((5.0 + 4.0 + 6.0) / 3) and at[114] == pytest.approx((5.0 + 6.0 + 6.0) / 3)
    assert at[128] == pytest.approx((9.0 + 6.0 + 6.0) / 3)  # 6.0, not the dip to 5.5
    assert at[512] == pytest.approx((9.0 + 7.0 + 6.6) / 3) and hi[-1] == 9.0  # the first run still counts at 512
    assert best_so_far([run([])]) == ([], [], [], [])
    # the PNG draws this curve, not the per-row mean that dropped runs after their last point
    drawn = []
    monkeypatch.setattr(report, "best_so_far", lambda members, *a: drawn.append(len(members)) or best_so_far(members, *a))
    for r in runs:
        r.rows = [dict(row, reward_mean=1.0) for row in r.rows]
    report.plot(runs, [], tmp_path)
    assert drawn == [3]
    assert_valid_png(tmp_path / "best_reward_vs_calls.png")


def test_report_puts_groups_side_by_side_at_the_spend_every_run_reached(tmp_path):
    """--cost UNIT: APE here spends few agent tokens per step and RL many; at equal agent tokens
    each group's best so far is read where every run has spent as much as the cheapest run's
    total, never from rows beyond it."""
    sweep = tmp_path / "sweep"
    rows = lambda per_step, bests: [{"step": s, "best_reward": b, "reward_mean": b, "target_calls": 10 * (s + 1),
                                     "agent_output_tokens": per_step * (s + 1)} for s, b in enumerate(bests)]
    fake_run(sweep / "0", "ape", 0, 0.6, 40, rows(100, [1.0, 2.0, 3.0, 4.0]))  # ends at 400 tokens
    fake_run(sweep / "1", "ape", 1, 0.6, 40, rows(150, [1.5, 1.5, 2.5, 5.0]))  # ends at 600
    fake_run(sweep / "2", "appo", 0, 0.6, 40, rows(250, [0.5, 6.0, 7.0, 8.0]))  # ends at 1000
    r = run_cli("report", str(sweep), "--cost", "agent_output_tokens")
    assert r.returncode == 0, r.stderr
    text = (sweep / "report" / "equal_cost_agent_output_tokens.md").read_text()
    # the level is 400 tokens (run 0's total): ape's bests there 4.0 and 1.5 (its 2.5 at 450 is past it), appo's 0.5
    assert "at agent_output_tokens = 400" in text.splitlines()[2]
    ape, appo = (next(l for l in text.splitlines() if l.startswith(f"| sst2 | {a} |")) for a in ("ape", "appo"))
    assert "| 2.750 [" in ape and "| 0.500 |" in appo
    assert_valid_png(sweep / "report" / "best_reward_vs_agent_output_tokens.png")
    old = tmp_path / "old"
    fake_run(old / "0", "ape", 0, 0.6, 40, [{"step": 0, "best_reward": 1.0, "target_calls": 10}])
    r = run_cli("report", str(old), "--cost", "usd")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "promptrl: error: report: --cost usd: no run logs 'usd' in its metrics rows (runs from before the cost ledger, or "
        "an algorithm without it); expected one of " + ", ".join(__import__("promptrl.report", fromlist=["x"]).COST_UNITS)]
