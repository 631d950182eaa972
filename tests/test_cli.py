"""The CLI as a user meets it: Hydra composition, one-line errors, exit codes."""

from conftest import run_cli


def test_train_composes_for_a_hub_agent():
    r = run_cli("train", "task=sst2", "agent=gemma-2b", "--cfg", "job")
    assert r.returncode == 0, r.stderr
    assert "model: google/gemma-1.1-2b-it" in r.stdout and "update_term: 5" in r.stdout


def test_preflight_composes_every_swept_value():
    # the bad value is the third of a sweep: caught before any job starts, as one line
    r = run_cli("train", "-m", "task=sst2,subj,nope", "seed=0,1")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Launching" not in r.stdout
    line = r.stderr.strip()
    assert line.startswith("promptrl: error: task='nope' is not a known option; expected one of: ")
    # the options, with the generated families folded into one entry each
    options = line.split("expected one of: ")[1].split(", ")
    assert {"sst2", "subj", "mmlu", "ii_* (24 options)", "mmlu_* (57 options)"} <= set(options)
    assert not any(o.startswith("mmlu_") and "*" not in o for o in options)
    r = run_cli("train", "task=ii_antonym")
    assert r.returncode == 2 and "task='ii_antonym' is not a known option (did you mean ii_antonyms?)" in r.stderr


# Other bad inputs, one line each: tests/test_bad_inputs.py.


def test_unimportable_algo_target_is_a_clear_error(tmp_path):
    r = run_cli("train", "algo._target_=promptrl.algos.nope.Nope", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 2
    assert "algo._target_='promptrl.algos.nope.Nope' cannot be imported" in r.stderr
