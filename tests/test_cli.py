"""The CLI as a user meets it: Hydra composition, one-line errors, exit codes."""

import subprocess
import sys

import pytest


def promptrl(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "promptrl.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def test_train_composes_for_a_hub_agent():
    r = promptrl("train", "task=sst2", "agent=gemma-2b", "--cfg", "job")
    assert r.returncode == 0, r.stderr
    assert "model: google/gemma-1.1-2b-it" in r.stdout and "update_term: 5" in r.stdout


@pytest.mark.parametrize("args, needle", [
    (["eval", "task=nope"], "task/nope"),
    (["eval", "target=nope"], "target/nope"),
    (["train", "algo=nope"], "algo/nope"),
])
def test_unknown_group_option_lists_the_choices(args, needle):
    r = promptrl(*args, "--cfg", "job")
    assert r.returncode != 0
    assert needle in r.stderr and "Available options" in r.stderr


def test_misspelled_key_and_wrong_type_fail_at_composition():
    r = promptrl("eval", "task.lable_words=[a,b]", "--cfg", "job")
    assert r.returncode != 0 and "lable_words" in r.stderr
    r = promptrl("eval", "target.batch_tokens=many", "--cfg", "job")
    assert r.returncode != 0 and "batch_tokens" in r.stderr and "many" in r.stderr


def test_user_error_is_one_line_without_traceback(tmp_path):
    r = promptrl("eval", "task.data_dir=/no/such/dir", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 2
    lines = [l for l in r.stderr.splitlines() if l.startswith("promptrl: error:")]
    assert lines == ["promptrl: error: data dir '/no/such/dir' (task.data_dir / PROMPTRL_DATA) does not exist"]
    assert "Traceback" not in r.stderr


def test_unknown_command():
    r = promptrl("tune")
    assert r.returncode == 2 and "unknown command 'tune'" in r.stderr


def test_unimportable_algo_target_is_a_clear_error(tmp_path):
    r = promptrl("train", "algo._target_=promptrl.algos.nope.Nope", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 2
    assert "algo._target_='promptrl.algos.nope.Nope' cannot be imported" in r.stderr
