"""Bad files outside task=custom end in one line naming the file, the line (or example) and what
was expected, never a traceback: LM-BFF TSV files, BIG-bench task.json, a prompt file,
predictions.jsonl (promptrl/jsonl.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from promptrl.config import register_configs
from promptrl.errors import UserError
from promptrl.jsonl import read_jsonl_rows, read_text
from promptrl.tasks import load_task

from conftest import SHARED_DATA, run_cli

CONF = Path(__file__).resolve().parent.parent / "conf"


def task_cfg(name: str, data_dir: Path):
    register_configs()
    with initialize_config_dir(str(CONF), version_base="1.3", job_name="test"):
        cfg = compose("train", overrides=[f"task={name}"]).task
    cfg.data_dir = str(data_dir)
    return cfg


@pytest.fixture
def sst2_copy(tmp_path):
    """A copy of SST-2's LM-BFF files (split 16-13 and the test file) to damage."""
    src = SHARED_DATA / "fsc" / "sst-2"
    if not src.is_dir():
        pytest.skip(f"shared benchmark data not found at {SHARED_DATA}")
    dst = tmp_path / "data" / "fsc" / "sst-2"
    shutil.copytree(src / "16-13", dst / "16-13")
    shutil.copy(src / "test.tsv", dst / "test.tsv")
    return dst


def test_a_tsv_that_is_not_utf8_names_its_line(sst2_copy):
    train = sst2_copy / "16-13" / "train.tsv"
    lines = train.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"\t", b" caf\xe9\t", 1)  # Latin-1, not UTF-8, on line 3
    train.write_bytes(b"\n".join(lines))
    with pytest.raises(UserError, match=rf"{train} line 3 is not UTF-8 text \(byte 0xe9\); expected a UTF-8 file"):
        load_task(task_cfg("sst2", sst2_copy.parent.parent), seed=13)


def test_a_short_tsv_row_names_its_line_and_the_header(sst2_copy):
    dev = sst2_copy / "16-13" / "dev.tsv"
    lines = dev.read_text(encoding="utf-8").split("\n")
    lines[4] = "1"  # the sentence lost
    dev.write_text("\n".join(lines) + "\n\n", encoding="utf-8")  # and blank lines at the end, which are fine
    with pytest.raises(UserError, match=rf"{dev} line 5: 1 tab-separated field\(s\); expected 2, the header's \['sentence', 'label'\]"):
        load_task(task_cfg("sst2", sst2_copy.parent.parent), seed=13)
    lines[4] = "a sentence\tpositive"
    dev.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(UserError, match=rf"{dev} line 5: label 'positive' is not an integer"):
        load_task(task_cfg("sst2", sst2_copy.parent.parent), seed=13)


def test_a_bad_data_file_is_one_line_through_the_cli(sst2_copy):
    train = sst2_copy / "16-13" / "train.tsv"
    train.write_bytes(train.read_bytes() + b"\xff\xfe broken\t1\n")
    r = run_cli("check", "task=sst2", "seed=13", data=sst2_copy.parent.parent, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().count("\n") == 0 and f"{train} line 34 is not UTF-8 text" in r.stderr


def write_bigbench(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "bigbench_ii" / "navigate" / "task.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def mc_rows(n: int) -> list[dict]:
    return [{"input": f"Step {i}.", "target_scores": {"True": i % 2, "False": 1 - i % 2}} for i in range(n)]


@pytest.mark.parametrize("content, message", [
    ('{"examples": [\n  {"input": "x",, }\n]}', r"task.json line 2 column \d+ is not JSON \(Expecting .*\); expected BIG-bench's task.json"),
    (b'{"examples": [\n{"input": "caf\xe9"}]}', r"task.json line 2 is not UTF-8 text"),
    ('{"examples": {"1": {}}}', r'task.json has no "examples" list'),
    (json.dumps({"examples": [*mc_rows(31), "a string"]}), r"task.json example 31 is a JSON str; expected an object"),
    (json.dumps({"examples": [*mc_rows(31), {"target_scores": {"True": 1, "False": 0}}]}),
     r"task.json example 31 has no field 'input'; expected input and target_scores"),
    (json.dumps({"examples": [*mc_rows(31), {"input": "x", "target_scores": "{'True': 1, 'False'"}]}),
     r"task.json example 31 is malformed \(SyntaxError: .*\); expected input and target_scores"),
])
def test_a_bad_bigbench_file_names_the_line_or_example(tmp_path, content, message):
    write_bigbench(tmp_path, content)
    with pytest.raises(UserError, match=message):
        load_task(task_cfg("bbii_navigate", tmp_path), seed=0)


def test_a_prompt_file_that_is_not_utf8_names_its_line(tmp_path):
    path = tmp_path / "best_prompt.txt"
    path.write_bytes("Classify the review.\nSay \u201cpositive\u201d or ".encode() + b"\x93negative\x94.\n")
    with pytest.raises(UserError, match=rf"{path} line 2 is not UTF-8 text \(byte 0x93\)"):
        read_text(path, "prompt_file")
    with pytest.raises(UserError, match=r"prompt_file '.*nothing.txt' does not exist"):
        read_text(tmp_path / "nothing.txt", "prompt_file")
    with pytest.raises(UserError, match=r"cannot read prompt_file"):
        read_text(tmp_path, "prompt_file")
    (tmp_path / "ok.txt").write_text("ok \u2713", encoding="utf-8")
    assert read_text(tmp_path / "ok.txt") == "ok \u2713"


def test_jsonl_rows_drop_a_torn_last_line_and_refuse_a_damaged_one(tmp_path):
    path = tmp_path / "predictions.jsonl"
    rows = [{"row": 1, "input": "caf\u00e9", "prediction": "a"}, {"row": 2, "input": "b", "prediction": "b"}]
    whole = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    assert read_jsonl_rows(tmp_path / "none.jsonl") == []
    path.write_bytes(whole + b"\n" + b'{"row": 3, "inp')  # a blank line, then a write cut by a kill
    assert read_jsonl_rows(path) == rows and path.read_bytes().endswith(b'"inp')  # read only: the file is as it was
    assert read_jsonl_rows(path, truncate_torn=True) == rows and path.read_bytes() == whole + b"\n"
    path.write_bytes(whole + b'{"row": 3, "input": "caf\xc3')  # torn inside a character: not even UTF-8
    assert read_jsonl_rows(path) == rows
    for damaged, message in [
        (b'{"row": 1, "input": "a"}\n{"row": 2, "inp\n{"row": 3}\n', r"predictions.jsonl line 2 is not JSON \(.*\); expected one JSON object a line"),
        (b'{"row": 1}\n[1, 2]\n{"row": 3}\n', r"predictions.jsonl line 2 is a JSON list; expected one JSON object a line"),
        (b'{"row": 1}\n{"row": 2, "input": "\xe9"}\n{"row": 3}\n', r"predictions.jsonl line 2 is not UTF-8 text"),
        (b'{"row": 1}\n{"row": 2, "inp\n', r"predictions.jsonl line 2 is not JSON"),  # a whole line, newline and all: not a torn write
    ]:
        path.write_bytes(damaged)
        with pytest.raises(UserError, match=message):
            read_jsonl_rows(path, truncate_torn=True)
        assert path.read_bytes() == damaged  # nothing cut: the user decides
