import json

import pytest

from promptrl.errors import UserError
from promptrl.tasks import load_task
from promptrl.tasks.classification import balanced_split


def task_cfg(**over):
    """A task config validated by the same schema as conf/task/*.yaml."""
    from omegaconf import OmegaConf

    from promptrl.config import TaskConfig

    cfg = dict(name="sst2", local_name="fsc/sst-2", data_dir=None, template="{prompt} Input : {input} Output :",
               label_words=[" negative", " positive"], manual_prompt="m")
    cfg.update(over)
    return OmegaConf.structured(TaskConfig(**cfg))


def test_local_lmbff_split_follows_the_seed(shared_data):
    t0 = load_task(task_cfg(data_dir=str(shared_data)), seed=0)
    assert (len(t0.train), len(t0.dev), len(t0.test)) == (32, 32, 1821)
    assert t0.source.endswith("16-13")  # seeds 0..4 map onto LM-BFF's 13, 21, 42, 87, 100
    assert load_task(task_cfg(data_dir=str(shared_data)), seed=2).source.endswith("16-42")
    assert load_task(task_cfg(data_dir=str(shared_data)), seed=42).source.endswith("16-42")
    assert {e.label for e in t0.train} == {0, 1}
    assert not {e.text for e in t0.train} & {e.text for e in t0.dev}


def test_test_subsample_is_seeded(shared_data):
    a = load_task(task_cfg(data_dir=str(shared_data), max_test_examples=50), seed=1)
    b = load_task(task_cfg(data_dir=str(shared_data), max_test_examples=50), seed=1)
    assert len(a.test) == 50 and [e.id for e in a.test] == [e.id for e in b.test]


def test_balanced_split_is_disjoint_balanced_and_drops_unlabelled():
    rows = [(f"s{i}", i % 3 if i % 7 else -1) for i in range(300)]
    train, dev = balanced_split(rows, shots=16, n_labels=3, seed=5)
    assert len(train) == len(dev) == 48
    for split in (train, dev):
        assert sorted(e.label for e in split) == sorted([0, 1, 2] * 16)
    assert not {e.id for e in train} & {e.id for e in dev}
    again, _ = balanced_split(rows, shots=16, n_labels=3, seed=5)
    assert [e.id for e in train] == [e.id for e in again]


def test_hub_failure_when_offline_says_what_to_do(monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError, match=r"cannot load dataset 'stanfordnlp/sst2'.*PROMPTRL_DATA"):
        load_task(task_cfg(hub_id="stanfordnlp/sst2"), seed=0)


@pytest.mark.parametrize("name, columns", [
    ("rte", ("premise", "hypothesis")), ("mnli", ("premise", "hypothesis")), ("snli", ("premise", "hypothesis")),
    ("mrpc", ("sentence1", "sentence2")), ("qnli", ("question", "sentence")),
])
def test_sentence_pair_tasks_load_from_a_hub_layout(name, columns, tmp_path, monkeypatch):
    """The shipped pair-task configs, pointed at a local dataset dir in the hub's layout and
    column names (the loading code is the same `datasets.load_dataset` call as for the hub)."""
    from omegaconf import OmegaConf

    from promptrl.config import TaskConfig

    monkeypatch.delenv("PROMPTRL_DATA", raising=False)
    cfg = OmegaConf.merge(OmegaConf.structured(TaskConfig), OmegaConf.load(f"conf/task/{name}.yaml"))
    n_labels = len(cfg.label_words)
    a, b = columns

    def rows(n, with_unlabelled):
        out = [{a: f"first {i}", b: f"second {i}", "label": i % n_labels, "idx": i} for i in range(n)]
        return out + ([{a: "x", b: "y", "label": -1, "idx": n}] if with_unlabelled else [])

    splits = {cfg.hub_train_split: 40 * n_labels, cfg.hub_test_split: 9}
    card = ["---", "configs:", "- config_name: default", "  data_files:"]
    for split, n in splits.items():
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(n, with_unlabelled=True)))
        card += [f"  - split: {split}", f"    path: {split}.jsonl"]
    (tmp_path / "README.md").write_text("\n".join(card + ["---", ""]))  # the hub's dataset-card split list
    cfg.hub_id, cfg.hub_config = str(tmp_path), None
    task = load_task(cfg, seed=0)
    assert len(task.train) == len(task.dev) == 16 * n_labels
    assert sorted(e.label for e in task.train) == sorted(list(range(n_labels)) * 16)
    assert not {e.text for e in task.train} & {e.text for e in task.dev}
    assert len(task.test) == 9 and all(e.label >= 0 for e in task.test)  # the -1 row is dropped
    first = task.test[0]
    assert first.text == cfg.input_format.format(**{a: "first 0", b: "second 0"})
    assert "\n" in first.text and task.render("Decide.", first.text).startswith("Decide. Input : ")


def test_input_format_without_fields_is_rejected():
    with pytest.raises(UserError, match=r"task.input_format 'no fields' must name columns"):
        load_task(task_cfg(hub_id="x", local_name=None, input_format="no fields"), seed=0)


def write_split(root, train="sentence\tlabel\nfine film\t1\nbad film\t0\n", dev=None, test=None):
    d = root / "fsc" / "toy" / "16-13"
    d.mkdir(parents=True)
    (d / "train.tsv").write_text(train)
    (d / "dev.tsv").write_text(dev if dev is not None else train)
    (root / "fsc" / "toy" / "test.tsv").write_text(test if test is not None else train)
    return root


@pytest.mark.parametrize("files, over, message", [
    ({}, {"data_dir": "/no/such/dir"}, r"data dir '/no/such/dir'.*does not exist"),
    ({"train": ""}, {}, r"train.tsv is empty"),
    ({"train": "text\tlabel\nx\t1\n"}, {}, r"no column 'sentence'; its columns are \['text', 'label'\]"),
    ({"test": "sentence\tlabel\nx\t7\n"}, {}, r"label 7 is out of range; expected 0..1"),
    ({"dev": "sentence\tlabel\nx\tpos\n"}, {}, r"label 'pos' is not an integer"),
    ({}, {"label_words": [" good", " good"]}, r"has duplicates"),
    ({}, {"label_words": [" good"]}, r"at least two"),
    ({}, {"template": "{prompt} Output :"}, r"must contain both"),
    ({}, {"template": "{prompt} {input} {label}"}, r"placeholder other than"),
    ({}, {"kind": "regression"}, r"task.kind 'regression' is not supported"),
])
def test_bad_task_inputs_name_the_value(tmp_path, files, over, message):
    root = write_split(tmp_path, **files)
    cfg = task_cfg(data_dir=str(root), local_name="fsc/toy")
    for key, value in over.items():
        setattr(cfg, key, value)
    with pytest.raises(UserError, match=message):
        load_task(cfg, seed=0)
