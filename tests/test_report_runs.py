"""`promptrl report` says what it leaves out: unfinished runs are named, a seed run twice is
refused in a paired comparison, and a paired t-test without spread has no p-value."""

from __future__ import annotations

import json
import math

import pytest
from omegaconf import OmegaConf

from promptrl.errors import UserError
from promptrl.report import compare_cells, main
from promptrl.stats import paired_comparison


def fake_run(d, algo, seed, test):
    d.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"seed": seed, "task": {"name": "sst2"}, "algo": {"name": algo}}), d / "config_resolved.yaml")
    (d / "results.json").write_text(json.dumps({"algo": algo, "seed": seed, "test_accuracy": test}))


def test_equal_paired_differences_have_no_t_test_p_value():
    # three seeds, each +0.1 (up to float rounding: 0.8 - 0.7 != 0.75 - 0.65 in the last digit)
    c = paired_comparison([0.8, 0.75, 0.7], [0.7, 0.65, 0.6])
    assert (c.wins, c.ties, c.losses) == (3, 0, 0) and c.mean_diff == pytest.approx(0.1)
    assert math.isnan(c.t_p) and c.sign_p == pytest.approx(0.25) and c.wilcoxon_p == pytest.approx(0.25)
    assert math.isnan(paired_comparison([0.5, 0.6, 0.7], [0.5, 0.6, 0.7]).t_p)  # all ties: no p either
    assert paired_comparison([0.8, 0.75, 0.7], [0.7, 0.66, 0.6]).t_p < 0.01  # a real spread still has one
    _, cells = compare_cells([{"metric": "test_accuracy", "a": "x", "b": "y", "a_mean": 0.75, "b_mean": 0.65, **vars(c)}], [])
    assert cells[0][-3:] == ["n/a", "0.250", "0.250"]  # not "<0.001"


def test_unfinished_runs_are_named_in_the_report(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for i, (algo, seed, acc) in enumerate([("appo", 0, 0.7), ("appo", 1, 0.8), ("ppo", 0, 0.6), ("ppo", 1, 0.7)]):
        fake_run(sweep / str(i), algo, seed, acc)
    (sweep / "4").mkdir()  # killed after it saved its config
    OmegaConf.save(OmegaConf.create({"seed": 2, "algo": {"name": "appo"}, "task": {"name": "sst2"}}), sweep / "4" / "config_resolved.yaml")
    (sweep / "5" / ".hydra").mkdir(parents=True)  # killed before: only Hydra's record
    (sweep / "5" / ".hydra" / "config.yaml").write_text("seed: 2\n")
    assert main([str(sweep), "--no-plots"]) == 0
    line = f"2 unfinished run(s) left out (no results.json or failed.json: running or killed): {sweep / '4'}, {sweep / '5'}"
    assert line in capsys.readouterr().out
    assert line in (sweep / "report" / "report.md").read_text()


def test_a_seed_run_twice_is_refused_in_a_paired_comparison(tmp_path):
    sweep = tmp_path / "sweep"
    for i, (algo, seed, acc) in enumerate([("appo", 0, 0.7), ("appo", 1, 0.8), ("ppo", 0, 0.6), ("ppo", 1, 0.7)]):
        fake_run(sweep / str(i), algo, seed, acc)
    assert main([str(sweep), "--no-plots", "--compare", "algo.name=appo,ppo"]) == 0
    fake_run(tmp_path / "again", "appo", 1, 0.9)  # the same seed launched again elsewhere
    with pytest.raises(UserError, match=rf"--compare 'algo.name=appo,ppo': algo.name=appo has two runs of seed 1 in "
                                        rf"task.name=sst2: {tmp_path / 'again'} and {sweep / '1'}; pass each run once"):
        main([str(sweep), str(tmp_path / "again"), "--no-plots", "--compare", "algo.name=appo,ppo"])
