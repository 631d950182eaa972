"""task=custom without a model: reading the user's files, classes and label words from the data,
k-shot splits, overlaps, and one clear line for every kind of bad data (`promptrl check`)."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from promptrl.cli import check_main
from promptrl.config import TaskConfig
from promptrl.errors import UserError
from promptrl.tasks import load_task

from conftest import REPO, SHARED_DATA, write_reviews

REVIEWS = ["task=custom", "task.input_field=review", "task.label_field=verdict"]


def custom(**overrides):
    cfg = OmegaConf.merge(OmegaConf.structured(TaskConfig), OmegaConf.load(REPO / "conf" / "task" / "custom.yaml"))
    return OmegaConf.merge(cfg, {"input_field": "review", "label_field": "verdict"}, overrides)


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    if not (SHARED_DATA / "fsc").is_dir():
        pytest.fail(f"the custom-task tests build their files from the shared data; none at {SHARED_DATA}")
    return write_reviews(tmp_path_factory.mktemp("data") / "reviews.csv", per_class=20)


def test_classes_words_and_k_shot_splits_come_from_the_data(reviews):
    task = load_task(custom(data_files={"train": str(reviews)}, shots=8), seed=0)
    assert task.label_names == ["thumbs down", "thumbs up"] and task.label_words == [" thumbs down", " thumbs up"]
    for split, n in (("train", 8), ("dev", 8)):
        labels = [e.label for e in getattr(task, split)]
        assert labels.count(0) == labels.count(1) == n, split
    assert [e.label for e in task.test].count(0) == [e.label for e in task.test].count(1) == 4  # 20% of 20 per class
    ids = [{e.id for e in getattr(task, s)} for s in ("train", "dev", "test")]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert task.data_report[:3] == ["train: 16 examples (thumbs down: 8, thumbs up: 8)",
                                    "dev: 16 examples (thumbs down: 8, thumbs up: 8)",
                                    "test: 8 examples (thumbs down: 4, thumbs up: 4)"]
    assert "thumbs down, thumbs up" in task.manual_prompt
    again, other = load_task(custom(data_files={"train": str(reviews)}, shots=8), 0), load_task(custom(data_files={"train": str(reviews)}, shots=8), 1)
    assert [e.id for e in again.train] == [e.id for e in task.train] != [e.id for e in other.train]


@pytest.mark.parametrize("ext", ["tsv", "jsonl", "json", "parquet"])
def test_every_format_reads_the_same_examples(ext, reviews, tmp_path):
    other = write_reviews(tmp_path / f"reviews.{ext}", per_class=20)
    want = load_task(custom(data_files={"train": str(reviews)}, shots=4), 0)
    got = load_task(custom(data_files={"train": str(other)}, shots=4), 0)
    for split in ("train", "dev", "test"):
        assert [(e.text, e.label) for e in getattr(got, split)] == [(e.text, e.label) for e in getattr(want, split)]


def test_integer_labels_index_the_given_names_and_label_words_override(tmp_path):
    path = tmp_path / "sst.tsv"
    path.write_text((SHARED_DATA / "fsc" / "sst-2" / "16-13" / "train.tsv").read_text())
    plain = load_task(custom(data_files={"train": str(path)}, input_field="sentence", label_field="label"), 0)
    assert plain.label_names == ["0", "1"] and plain.label_words == [" 0", " 1"]
    named = load_task(custom(data_files={"train": str(path)}, input_field="sentence", label_field="label",
                             label_names=["bad film", "good film"], label_words=[" terrible", " great"]), 0)
    assert named.label_names == ["bad film", "good film"] and named.label_words == [" terrible", " great"]
    assert [e.label for e in named.train] == [e.label for e in plain.train]
    # names given for string labels set the class order
    csv_path = write_reviews(tmp_path / "r.csv", 10)
    flipped = load_task(custom(data_files={"train": str(csv_path)}, label_names=["thumbs up", "thumbs down"]), 0)
    sorted_ = load_task(custom(data_files={"train": str(csv_path)}), 0)
    assert flipped.label_words == [" thumbs up", " thumbs down"]
    named_by = lambda t: {e.text: t.label_names[e.label] for s in ("train", "dev", "test") for e in getattr(t, s)}
    assert named_by(flipped) == named_by(sorted_) and len(named_by(flipped)) == 20


def test_dev_and_test_files_are_used_and_test_inputs_seen_in_training_are_dropped(reviews, tmp_path):
    dev = write_reviews(tmp_path / "dev.csv", per_class=6, skip=20)
    test = tmp_path / "test.csv"
    rows = reviews.read_text().splitlines()
    test.write_text("\n".join([rows[0], *rows[1:4]] + write_reviews(tmp_path / "t.csv", 5, skip=40).read_text().splitlines()[1:]) + "\n")
    task = load_task(custom(data_files={"train": str(reviews), "dev": str(dev), "test": str(test)}), 0)
    assert len(task.train) == 40 and len(task.dev) == 12
    assert len(task.test) == 10 and not ({e.text for e in task.test} & {e.text for e in task.train})
    assert any("3 test input(s) also occur in train or dev" in line and "dropped from test" in line for line in task.data_report)


def test_generation_task_reads_answers_and_lists_of_answers(tmp_path):
    path = tmp_path / "capitals.jsonl"
    rows = [{"q": f"capital of country {i}", "a": [f"city{i}", f"town{i}"] if i % 2 else f"city{i}"} for i in range(20)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = load_task(custom(data_files={"train": str(path)}, kind="generation", input_field="q", target_field="a",
                            metric="em", shots=5), 0)
    assert task.is_generation and len(task.train) == len(task.dev) == 5 and len(task.test) == 4
    by_text = {e.text: e.answers for e in task.train + task.dev + task.test}
    assert by_text["capital of country 3"] == ("city3", "town3") and by_text["capital of country 4"] == ("city4",)
    assert task.manual_prompt == ""


def bad_files(tmp):
    """name -> path of one file per kind of bad data."""
    def put(name, text, mode="w"):
        p = tmp / name
        p.write_bytes(text) if mode == "wb" else p.write_text(text)
        return str(p)

    good = "review,verdict\n" + "".join(f"film number {i} was fine,{'thumbs up' if i % 2 else 'thumbs down'}\n" for i in range(40))
    return {
        "good": put("good.csv", good),
        "wrong_columns": put("cols.csv", "text,label\na film,thumbs up\n"),
        "header_only": put("header.csv", "review,verdict\n"),
        "few": put("few.csv", good + "a rare one,meh\na second,meh\n"),
        "dev_unseen": put("dev.csv", "review,verdict\nsome film,thumbs up\nanother film,so-so\n"),
        "empty_input": put("blank.csv", good + "  ,thumbs up\n"),
        "same_word": put("same.csv", good + "odd spacing,thumbs up \n"),
        "garbage": put("broken.parquet", b"\x00\x01 not a parquet file", "wb"),
        "bad_json": put("broken.jsonl", '{"review": "fine", "verdict": "thumbs up"}\n{"review": oops\n'),
        "xlsx": put("sheet.xlsx", "binary"),
    }


# (id, overrides (with <name> replaced by bad_files paths), substrings of the one error line)
BAD_DATA = [
    ("missing file", ["task.data_files.train=/no/such/reviews.csv"],
     ["task.data_files.train: '/no/such/reviews.csv' does not exist; expected a CSV, TSV, JSON Lines, JSON or Parquet file"]),
    ("missing column", ["task.data_files.train=<wrong_columns>"],
     ["cols.csv has no column 'review' (task.input_field); its columns are ['text', 'label']"]),
    ("empty split: no rows", ["task.data_files.train=<header_only>"], ["header.csv has no rows; expected a header row"]),
    ("empty split: drawn test", ["task.data_files.train=<good>", "task.test_size=0"],
     ["the test split is empty (no rows of", "give task.data_files.test or more rows, or a larger task.test_size"]),
    ("class with fewer examples than shots", ["task.data_files.train=<few>", "task.shots=2"],
     ["few.csv after the test hold-out: class 'meh' has 2 examples; task.shots=2 needs 4 (2 train + 2 dev", "lower task.shots"]),
    ("dev label never seen in train", ["task.data_files.train=<good>", "task.data_files.dev=<dev_unseen>"],
     ["dev.csv row 2: label 'so-so' is not a class of the training data", "expected one of ['thumbs down', 'thumbs up']"]),
    ("empty input", ["task.data_files.train=<empty_input>"],
     ["blank.csv row 41: empty input in column 'review' (task.input_field); every row needs an input text"]),
    ("two names one label word", ["task.data_files.train=<same_word>"],
     ["label names 'thumbs up' and 'thumbs up ' map to the same label word ' thumbs up'", "task.label_words"]),
    ("explicit words collide", ["task.data_files.train=<good>", "task.label_words=[' yes',' yes']"],
     ["label names 'thumbs down' and 'thumbs up' map to the same label word ' yes'"]),
    ("unreadable parquet", ["task.data_files.train=<garbage>"], ["cannot read", "broken.parquet as Parquet", "expected a CSV"]),
    ("unreadable json lines", ["task.data_files.train=<bad_json>"], ["cannot read", "broken.jsonl as JSON Lines"]),
    ("unknown extension", ["task.data_files.train=<xlsx>"], ["sheet.xlsx' has the extension '.xlsx'; expected a CSV"]),
    ("no data at all", [], ["task=custom needs its data: task.data_files.train=PATH"]),
    ("shots not positive", ["task.data_files.train=<good>", "task.shots=0"], ["task.shots=0; expected a positive number"]),
]


@pytest.mark.parametrize("name, overrides, needles", BAD_DATA, ids=[c[0] for c in BAD_DATA])
def test_bad_data_is_one_line_naming_the_file_and_what_is_accepted(name, overrides, needles, tmp_path, capsys):
    files = bad_files(tmp_path)
    args = list(REVIEWS)
    for o in overrides:
        for key, path in files.items():
            o = o.replace(f"<{key}>", path)
        args.append(o)
    assert check_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("promptrl: error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


def test_load_errors_are_user_errors_not_tracebacks(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_task(custom(data_files={"train": str(tmp_path / "none.csv")}), 0)


def test_check_prints_sizes_label_tokens_an_example_and_the_plan(tmp_path, capsys):
    """The check on a target with a tiny word-level tokenizer: everything it prints comes from the
    data, the tokenizer and the algorithm's schedule; no model is loaded."""
    from conftest import make_model, make_tokenizer

    tok = make_tokenizer()
    target = tmp_path / "tiny-lm"
    make_model(len(tok)).save_pretrained(target)
    tok.save_pretrained(target)
    data = tmp_path / "toy.csv"
    data.write_text("review,verdict\n" + "".join(f"the movie {i} was great,very good\nthe film {i} was bad,very bad\n"
                                                  for i in range(20)))
    args = [*REVIEWS, f"task.data_files.train={data}", "task.shots=4", f"target.model={target}", "target.gguf_package=null",
            "target.name=tiny", "algo=ape", "algo.num_candidates=4"]
    assert check_main(args) == 0
    out = capsys.readouterr().out
    for line in ["train: 8 examples (very bad: 4, very good: 4)", "dev: 8 examples (very bad: 4, very good: 4)",
                 "test: 8 examples (very bad: 4, very good: 4)",  # 20% of 20 per class held out first
                 "['very', 'bad']", "' very bad', ' very good' share a first token; their later tokens decide",
                 "Classify the input as one of: very bad, very good.\nInput: the ",
                 "training (ape): 32 target calls by its schedule",  # 4 candidates x 8 training examples
                 "final evaluation: at most 112",  # (queue 5 + manual + empty) x (8 dev + 8 test)
                 "check passed"]:
        assert line in out, (line, out)
    assert check_main([*args, "budget.target_calls=10"]) == 0
    assert "stopped by budget.target_calls=10" in capsys.readouterr().out


def test_a_hub_dataset_gives_its_class_names_and_splits(tmp_path):
    """task.hub_id goes through datasets.load_dataset like any hub id; a local directory of
    Parquet files (which keep the ClassLabel feature) stands in for the hub here."""
    import datasets

    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    rows = lambda n, tag: {"sentence": [f"{tag} film {i}" for i in range(n)], "label": [i % 2 for i in range(n)]}
    datasets.Dataset.from_dict(rows(40, "train"), features=features).to_parquet(str(tmp_path / "train.parquet"))
    test = rows(10, "test")
    test["label"][0] = -1  # no gold label, as in GLUE's test splits
    datasets.Dataset.from_dict(test, features=features).to_parquet(str(tmp_path / "test.parquet"))
    task = load_task(custom(hub_id=str(tmp_path), input_field="sentence", label_field="label", shots=4), 0)
    assert task.label_names == ["negative", "positive"] and task.label_words == [" negative", " positive"]
    assert len(task.train) == len(task.dev) == 8 and len(task.test) == 9
    assert task.source.startswith(f"hub:{tmp_path}")
