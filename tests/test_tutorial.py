"""docs/custom_task.md, run as a reader runs it: its Python block builds the files, its bash
blocks (check, train, predict) run in order on the embedded model, in a fresh directory. The
page cannot go stale: a command that stops working, or a file the page promises that is not
written, fails here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, SHARED_DATA

pytestmark = pytest.mark.slow

PAGE = REPO / "docs" / "custom_task.md"
END = "<!-- end of the tested walkthrough"
BLOCK = re.compile(r"^```(python|bash)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def walkthrough() -> list[tuple[str, str]]:
    """(language, code) of every python and bash block before the end marker, in page order."""
    text = PAGE.read_text(encoding="utf-8")
    assert END in text, f"{PAGE} lost its end-of-walkthrough marker"
    return BLOCK.findall(text.split(END)[0])


def test_the_page_has_the_walkthrough_it_promises():
    blocks = walkthrough()
    commands = [code.split()[1] for lang, code in blocks if lang == "bash"]
    assert [lang for lang, _ in blocks][0] == "python" and commands == ["check", "train", "predict"]


def test_the_tutorial_runs_as_written(tmp_path):
    if not (SHARED_DATA / "fsc").is_dir():
        pytest.fail(f"the tutorial builds its CSV from the shared data; none at {SHARED_DATA}")
    env = {**os.environ, "PROMPTRL_DATA": str(SHARED_DATA), "HF_HUB_OFFLINE": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    # `promptrl` is this checkout's CLI, whatever is installed on PATH
    shim = f'promptrl() {{ "{sys.executable}" -m promptrl.cli "$@"; }}\nset -e\n'
    outputs = []
    for lang, code in walkthrough():
        cmd = [sys.executable, "-c", code] if lang == "python" else ["bash", "-c", shim + code]
        r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
        assert r.returncode == 0, (code, r.stdout[-2000:], r.stderr[-3000:])
        outputs.append(r.stdout)
    check = outputs[1]
    assert "train: 16 examples (thumbs down: 8, thumbs up: 8)" in check and "check passed" in check
    assert "'Ġthumbs', 'Ġdown'" in check and "share a first token" in check
    run = tmp_path / "runs" / "reviews-ape"
    results = json.loads((run / "results.json").read_text())
    assert results["algo"] == "ape" and results["label_words"] == [" thumbs down", " thumbs up"]
    assert (run / "best_prompt.txt").read_text().strip() == results["best_prompt"]
    predicted = tmp_path / "runs" / "reviews-predict"
    rows = [json.loads(line) for line in (predicted / "predictions.jsonl").read_text().splitlines()]
    assert [r["row"] for r in rows] == list(range(1, 11))  # one prediction per input of new.csv
    assert all(r["prediction"] in ("thumbs down", "thumbs up") and abs(sum(r["probabilities"].values()) - 1) < 1e-4
               for r in rows)
    assert "label" not in rows[0]  # new.csv has no labels: nothing to score
    assert len((predicted / "predictions.csv").read_text().splitlines()) == 11
