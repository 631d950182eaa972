"""`promptrl predict`'s bookkeeping without a model: reading the inputs (labels optional), what
a resumed run keeps from predictions.jsonl after a kill, and the CSV beside it."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from promptrl.errors import UserError
from promptrl.predict import append_rows, csv_text, predict_batch, read_inputs, rows_done
from promptrl.scoring import NO_LABEL, ClassificationScores
from promptrl.tasks import Task


def task(**kw):
    return Task(name="toy", kind="classification", template="{prompt} {input}", label_words=[" thumbs down", " thumbs up"],
                metric="accuracy", manual_prompt="", train=[], dev=[], test=[], label_names=["thumbs down", "thumbs up"], **kw)


def cfg(path, **task_cfg):
    return OmegaConf.create({"input_file": str(path), "task": {"input_field": "review", "text_field": "sentence",
                                                               "label_field": "verdict", "target_field": None, **task_cfg}})


def test_inputs_with_and_without_labels(tmp_path):
    plain = tmp_path / "new.csv"
    plain.write_text("review\na fine film\na dull film\n")
    assert read_inputs(cfg(plain), task()) == [{"row": 1, "input": "a fine film", "gold": None},
                                               {"row": 2, "input": "a dull film", "gold": None}]
    labelled = tmp_path / "more.jsonl"
    labelled.write_text('{"review": "fine", "verdict": "thumbs up"}\n{"review": "dull", "verdict": null}\n')
    assert [r["gold"] for r in read_inputs(cfg(labelled), task())] == [1, None]  # a missing label: predicted, not scored
    bad = tmp_path / "bad.csv"
    bad.write_text("review,verdict\nfine,meh\n")
    with pytest.raises(UserError, match=r"bad.csv row 1: label 'meh' is not a class of the task; expected one of"):
        read_inputs(cfg(bad), task())
    with pytest.raises(UserError, match=r"has no column 'review' \(task.input_field\); its columns are \['text'\]"):
        (tmp_path / "cols.csv").write_text("text\nfine\n")
        read_inputs(cfg(tmp_path / "cols.csv"), task())


def test_a_resumed_run_keeps_whole_lines_and_refuses_other_inputs(tmp_path):
    inputs = [{"row": i, "input": f"text {i}", "gold": None} for i in range(1, 6)]
    path = tmp_path / "predictions.jsonl"
    append_rows(path, [{"row": 1, "input": "text 1", "prediction": "a"}, {"row": 2, "input": "text 2", "prediction": "b"}])
    with path.open("a") as f:
        f.write('{"row": 3, "input": "te')  # a kill in the middle of a write
    done = rows_done(path, inputs)
    assert [d["row"] for d in done] == [1, 2] and path.read_text().endswith("}\n")
    other = [{**r, "input": r["input"].upper()} for r in inputs]
    with pytest.raises(UserError, match="holds row 1 for another input"):
        rows_done(path, other)


def test_the_csv_has_one_row_per_prediction_and_a_column_per_class(tmp_path):
    rows = [{"row": 1, "input": "fine, really", "prediction": "thumbs up", "probabilities": {"thumbs down": 0.25, "thumbs up": 0.75},
             "label": "thumbs up", "correct": True},
            {"row": 2, "input": "na\u00efve \u2014 \"quoted\"\nand on", "prediction": "thumbs down",
             "probabilities": {"thumbs down": 0.6000000238418579, "thumbs up": 0.3999999761581421}}]
    text = csv_text(rows[:1], task())
    assert text.splitlines() == ["row,input,prediction,label,correct,p(thumbs down),p(thumbs up)",
                                 '1,"fine, really",thumbs up,thumbs up,True,0.250000,0.750000']
    # what predictions.jsonl holds: one line a row, read back as the very rows written
    path = tmp_path / "predictions.jsonl"
    append_rows(path, rows)
    lines = path.read_text(encoding="utf-8").split("\n")
    assert len(lines) == 3 and lines[2] == "" and "na\u00efve \u2014" in lines[1]  # UTF-8 as it is, the newline escaped
    assert [json.loads(line) for line in lines[:2]] == rows


class WrittenAnswers:
    """Scores as the chat target's scoring=generate gives them: the label each answer names
    (log-prob 0, the others NO_LABEL), or none at all."""

    def __init__(self, named: list[int | None]):
        self.named = named

    def score(self, prompts, examples):
        rows = torch.full((1, len(examples), 2), NO_LABEL)
        for i, c in enumerate(self.named):
            if c is not None:
                rows[0, i, c] = 0.0
        return ClassificationScores(rows, torch.tensor([ex.label for ex in examples]), answers=True)


def test_an_answer_that_names_no_label_is_no_prediction_and_wrong(tmp_path):
    batch = [{"row": 1, "input": "fine", "gold": 1}, {"row": 2, "input": "dull", "gold": 0},
             {"row": 3, "input": "odd", "gold": None}]
    rows = predict_batch(WrittenAnswers([1, None, None]), task(), "Judge it.", batch)
    assert rows[0]["prediction"] == "thumbs up" and rows[0]["correct"] is True
    assert rows[0]["probabilities"] == {"thumbs down": 0.0, "thumbs up": 1.0}
    # not "thumbs down" (the first class) at 0.5 / 0.5, and not right by that accident
    assert rows[1]["prediction"] is None and rows[1]["correct"] is False
    assert rows[1]["probabilities"] == {"thumbs down": 0.0, "thumbs up": 0.0}
    assert rows[2]["prediction"] is None and "correct" not in rows[2]
    assert csv_text(rows, task()).splitlines()[2] == "2,dull,,thumbs down,False,0.000000,0.000000"
