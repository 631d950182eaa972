"""Instruction induction, BIG-Bench II and hub QA tasks: loading rules, splits, answer metrics,
and generation scoring through the Scorer interface."""

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from promptrl.config import register_configs
from promptrl.errors import UserError
from promptrl.tasks import load_task
from promptrl.tasks.metrics import contains, exact_match, exact_set, f1, normalize, score_answer

CONF = Path(__file__).resolve().parent.parent / "conf" / "task"
register_configs()
SHARED_II = ["active_to_passive", "antonyms", "common_concept", "diff", "first_word_letter", "informal_to_formal",
             "letters_list", "negation", "num_to_verbal", "rhymes", "second_word_letter", "sentence_similarity",
             "sentiment", "singular_to_plural", "sum", "synonyms", "translation_en-de", "translation_en-es",
             "translation_en-fr"]


def shipped(name: str, **over):
    """The task config as `task=<name>` composes it (config extension included)."""
    with initialize_config_dir(str(CONF.parent), version_base="1.3", job_name="test"):
        cfg = compose("train", overrides=[f"task={name}"]).task
    for key, value in over.items():
        setattr(cfg, key, value)
    return cfg


# --- metrics -------------------------------------------------------------------------------------
def test_normalisation_follows_ape():
    assert normalize("  The Cat-Dog and friends.\nsecond line") == "the cat dog friends"
    assert normalize("Sentence 1: It rained.") == "it rained"


@pytest.mark.parametrize("fn, prediction, gold, want", [
    (exact_match, "Insane.", "insane", 1.0),
    (exact_match, "insane person", "insane", 0.0),
    (exact_set, "dog, cat, bird", "bird, dog, cat", 1.0),  # order does not matter
    (exact_set, "dog, cat", "bird, dog, cat", 0.0),
    (contains, "I would say rest, maybe sleep", "rest", 1.0),
    (contains, "restful", "rest", 0.0),  # whole words only
    (f1, "the big red dog", "a big dog", 2 * (2 / 4) * (2 / 3) / (2 / 4 + 2 / 3)),  # partial overlap
    (f1, "cat", "dog", 0.0),
])
def test_metrics_on_hand_made_cases(fn, prediction, gold, want):
    assert fn(prediction, gold) == pytest.approx(want)


def test_every_gold_answer_is_accepted():
    assert score_answer("em", "hora", ("tiempo", "hora", "vez")) == 1.0
    assert score_answer("em", "reloj", ("tiempo", "hora")) == 0.0
    assert score_answer("f1", "a b", ("a", "a b")) == 1.0


# --- instruction induction ------------------------------------------------------------------------
def test_all_24_ii_tasks_have_configs():
    names = sorted(p.stem for p in CONF.glob("ii_*.yaml"))
    assert len(names) == 24 and "ii_antonyms" in names and "ii_larger_animal" in names
    metrics = {n: shipped(n).metric for n in names}
    assert metrics["ii_taxonomy_animal"] == metrics["ii_orthography_starts_with"] == "exact_set"
    assert metrics["ii_common_concept"] == metrics["ii_informal_to_formal"] == "f1"
    assert metrics["ii_synonyms"] == "contains" and metrics["ii_antonyms"] == "em"
    assert all(shipped(n).reward_metric == "f1" for n in names)


@pytest.mark.parametrize("task", SHARED_II)
def test_shared_ii_tasks_load_with_held_out_test(task, shared_data):
    t = load_task(shipped(f"ii_{task}", data_dir=str(shared_data)), seed=0)
    assert t.is_generation and t.train and t.dev and t.test
    assert all(ex.answers for ex in t.train + t.dev + t.test)
    assert not {ex.id for ex in t.test} & {ex.id for ex in t.train + t.dev}  # test = the execute file
    assert all(ex.id.startswith("execute/") for ex in t.test)
    assert t.manual_prompt


def test_ii_splits_and_loading_rules(shared_data):
    t = load_task(shipped("ii_antonyms", data_dir=str(shared_data)), seed=0)
    assert (len(t.train), len(t.dev), len(t.test)) == (32, 32, 100)
    assert [e.id for e in t.dev][0] == "induce/64"  # dev = induce[64:96]
    small = load_task(shipped("ii_common_concept", data_dir=str(shared_data)), seed=0)
    assert len(small.train) == len(small.dev) == 17  # a tiny induce set is both train and dev
    assert small.train[0].text.count(",") == 2  # all three items, not the first two
    tr = load_task(shipped("ii_translation_en-es", data_dir=str(shared_data)), seed=0)
    assert len(tr.test[0].answers) > 1  # every possible translation is accepted
    rh = load_task(shipped("ii_rhymes", data_dir=str(shared_data)), seed=0)
    assert len(rh.train[0].answers) > 1


def test_cause_and_effect_rule(tmp_path):
    root = tmp_path / "instruction_induction"
    rows = {str(i): {"cause": f"Cause {i}.", "effect": f"Effect {i}."} for i in range(1, 11)}
    for split in ("induce", "execute"):
        (root / split).mkdir(parents=True)
        (root / split / "cause_and_effect.json").write_text(json.dumps({"examples": rows}))
    t = load_task(shipped("ii_cause_and_effect", data_dir=str(tmp_path)), seed=0)
    assert all(ex.answers == (f"Cause {i + 1}.",) for i, ex in enumerate(t.test))
    assert {ex.text.startswith("Sentence 1: Cause") for ex in t.test} == {True, False}  # both orders occur
    assert all(f"Effect {i + 1}." in ex.text for i, ex in enumerate(t.test))


def test_ii_missing_local_file_and_offline_download_fail_clearly(tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"larger_animal.json does not exist"):
        load_task(shipped("ii_larger_animal", data_dir=str(tmp_path)), seed=0)
    import urllib.request

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setenv("PROMPTRL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match=r"cannot download https://.*larger_animal.json.*set PROMPTRL_DATA"):
        load_task(shipped("ii_larger_animal", data_dir=None), seed=0)


# --- BIG-Bench II ---------------------------------------------------------------------------------
def test_bbii_configs_cover_the_20_tasks():
    names = sorted(p.stem for p in CONF.glob("bbii_*.yaml"))
    assert len(names) == 20
    assert sum(shipped(n).kind == "generation" for n in names) == 7


def test_bbii_multiple_choice_uses_letters_and_first_30_as_train(shared_data):
    t = load_task(shipped("bbii_navigate", data_dir=str(shared_data)), seed=0)
    assert t.label_words == [" A", " B"] and len(t.train) == 30 and len(t.test) == 1000 - 30
    assert [e.id for e in t.train] == [f"bb/{i}" for i in range(30)]
    assert not {e.id for e in t.test} & {e.id for e in t.train}
    assert "Choices :\nA : True\nB : False" in t.train[0].text and t.train[0].label == 0
    assert t.manual_prompt.startswith("If you follow these instructions")  # the file's task_prefix


def test_bbii_generation_accepts_every_target(shared_data):
    t = load_task(shipped("bbii_object_counting", data_dir=str(shared_data)), seed=0)
    assert t.is_generation and set(t.train[0].answers) == {"three", "3"}
    with pytest.raises(UserError, match=r"set task.kind=generation"):
        load_task(shipped("bbii_object_counting", data_dir=str(shared_data), kind="classification"), seed=0)


# --- hub QA -------------------------------------------------------------------------------------
def hub_dir(root: Path, splits: dict[str, list[dict]]) -> str:
    """A local dataset directory in the hub's layout (dataset card naming the split files)."""
    card = ["---", "configs:", "- config_name: default", "  data_files:"]
    for split, rows in splits.items():
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        card += [f"  - split: {split}", f"    path: {split}.jsonl"]
    (root / "README.md").write_text("\n".join(card + ["---", ""]))
    return str(root)


def test_mmlu_loads_from_the_hub_schema(tmp_path):
    row = lambda i: {"question": f"Q{i}?", "subject": "anatomy", "choices": ["w", "x", "y", "z"], "answer": i % 4}
    cfg = shipped("mmlu_anatomy")
    cfg.hub_id = hub_dir(tmp_path, {"validation": [row(i) for i in range(20)], "test": [row(i) for i in range(7)],
                                    "dev": [row(i) for i in range(5)]})
    cfg.hub_config = None
    t = load_task(cfg, seed=0)
    assert (len(t.train), len(t.dev), len(t.test)) == (10, 10, 7) and t.category == "STEM"
    assert not {e.text for e in t.train} & {e.text for e in t.dev}
    assert t.test[1].label == 1 and t.test[1].text == "Q1?\nChoices :\nA : w\nB : x\nC : y\nD : z"
    assert t.label_words == [" A", " B", " C", " D"]
    assert len(list(CONF.glob("mmlu_*.yaml"))) == 57


def test_openbookqa_loads_from_the_hub_schema(tmp_path):
    def row(i):
        return {"id": str(i), "question_stem": f"Stem {i}", "choices": {"text": ["a", "b", "c", "d"], "label": list("ABCD")},
                "answerKey": "ABCD"[i % 4], "fact1": f"fact {i}"}
    cfg = shipped("openbookqa")
    cfg.hub_id, cfg.hub_config = hub_dir(tmp_path, {"validation": [row(i) for i in range(8)], "test": [row(i) for i in range(4)]}), None
    t = load_task(cfg, seed=0)
    assert t.test[2].label == 2 and t.test[2].text.endswith("D : d\nHint : fact 2")


def test_qa_offline_is_one_clear_error(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("offline")))
    with pytest.raises(UserError, match=r"cannot load dataset 'cais/mmlu' \(anatomy\) split 'validation'"):
        load_task(shipped("mmlu_anatomy"), seed=0)


# --- generation scoring ---------------------------------------------------------------------------
def make_generation_task(answers):
    from promptrl.tasks import Example, Task

    ex = [Example(id=f"t/{i}", text=f"w{i}", answers=a) for i, a in enumerate(answers)]
    return Task(name="gen", kind="generation", template="{prompt}\nInput : {input}\nOutput :", label_words=[],
                metric="em", manual_prompt="", train=ex, dev=ex, test=ex, reward_metric="f1")


def test_generation_scores_use_task_and_reward_metrics(tmp_path):
    from promptrl.scoring import Scorer, attach_cache, reward

    class Fixed(Scorer):
        def __init__(self, task):
            super().__init__(task, "fixed")
            self.seen = []

        def generate(self, texts, max_new_tokens, stop=()):
            self.seen += texts
            return ["big dog" if t.startswith("A") else "cat" for t in texts]

    task = make_generation_task([("big dog",), ("dog",), ("cat",)])
    scorer = Fixed(task)
    attach_cache(scorer, tmp_path)
    s = scorer.score(["A", "B"], task.test)
    assert s.accuracy.tolist() == pytest.approx([1 / 3, 1 / 3])  # EM
    assert reward(s, 10, 0.1).tolist() == pytest.approx([(1 + 2 / 3) / 3, 1 / 3])  # mean F1, used directly
    assert s.margin.tolist() == [0.0, 0.0]
    n = len(scorer.seen)
    again = scorer.score(["A", "B"], task.test)
    assert len(scorer.seen) == n and torch.equal(again.values, s.values)  # answered from the cache
    assert scorer.calls == 12


def test_hf_scorer_generates_greedily_with_stop_strings(tokenizer, tiny_model):
    from promptrl.scoring.hf import HFScorer

    task = make_generation_task([("good",), ("bad",)])
    scorer = HFScorer(tiny_model, tokenizer, task, "tiny")
    texts = ["the movie was", "i love this film and"]
    long = scorer.generate(texts, max_new_tokens=6)
    assert all(len(o.split()) <= 6 for o in long)
    stop_word = long[0].split()[1] if len(long[0].split()) > 1 else None
    if stop_word:
        cut = scorer.generate(texts[:1], max_new_tokens=6, stop=[" " + stop_word])
        assert cut == [long[0].split(" " + stop_word)[0].strip()]
    assert scorer.generate(texts, max_new_tokens=6) == long  # greedy: deterministic
    s = scorer.score(["the"], task.test)
    assert s.values.shape == (1, 2, 2)


def test_final_evaluation_scores_the_held_out_split_only(shared_data):
    """The authors' II/BBII scripts evaluated the final prompts on the last training batch
    (REFERENCE §4.5); here the test numbers come from the execute file and nothing else."""
    from promptrl.evaluate import final_evaluation
    from promptrl.scoring import Scorer

    class Recording(Scorer):
        def __init__(self, task):
            super().__init__(task, "recording")
            self.inputs = []

        def score(self, prompts, examples):
            self.inputs.append([ex.id for ex in examples])
            return super().score(prompts, examples)

        def generate(self, texts, max_new_tokens, stop=()):
            return ["x"] * len(texts)

    task = load_task(shipped("ii_antonyms", data_dir=str(shared_data)), seed=0)
    scorer = Recording(task)
    out = final_evaluation(scorer, task, [{"prompt": "Give the antonym.", "reward": 0.5, "step": 0}])
    scored = [i for call in scorer.inputs for i in call]  # each split in pieces (the progress bar's), dev first
    dev_ids, test_ids = scored[:len(task.dev)], scored[len(task.dev):]
    train_ids = {ex.id for ex in task.train}
    assert test_ids == [ex.id for ex in task.test] and not set(test_ids) & train_ids
    assert not set(dev_ids) & train_ids
    assert out["n_test"] == 100 and not {ex.text for ex in task.test} & {ex.text for ex in task.train}
