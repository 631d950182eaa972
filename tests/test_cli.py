"""The CLI as a user meets it: Hydra composition, one-line errors, exit codes."""

import subprocess
import sys


def promptrl(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "promptrl.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def test_train_composes_for_a_hub_agent():
    r = promptrl("train", "task=sst2", "agent=gemma-2b", "--cfg", "job")
    assert r.returncode == 0, r.stderr
    assert "model: google/gemma-1.1-2b-it" in r.stdout and "update_term: 5" in r.stdout


def test_preflight_composes_every_swept_value():
    # the bad value is the third of a sweep: caught before any job starts, as one line
    r = promptrl("train", "-m", "task=sst2,subj,nope", "seed=0,1")
    assert r.returncode == 2 and r.stderr.strip() == (
        "promptrl: error: task='nope' is not a known option; expected one of: agnews, bbii_* (20 options), cr, ii_* (24 options), "
        "mmlu, mmlu_* (57 options), mnli, mr, mrpc, openbookqa, qnli, rte, snli, sst2, sst2_paper, sst5, subj, trec")
    r = promptrl("train", "task=ii_antonym")
    assert r.returncode == 2 and "task='ii_antonym' is not a known option (did you mean ii_antonyms?)" in r.stderr
    assert "Launching" not in r.stdout


# Other bad inputs, one line each: tests/test_bad_inputs.py.


def test_unimportable_algo_target_is_a_clear_error(tmp_path):
    r = promptrl("train", "algo._target_=promptrl.algos.nope.Nope", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 2
    assert "algo._target_='promptrl.algos.nope.Nope' cannot be imported" in r.stderr
