"""The FLOP arithmetic behind scripts/bench_scoring.py's MFU and APPO-step floors."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

spec = importlib.util.spec_from_file_location("bench_scoring", Path(__file__).parent.parent / "scripts" / "bench_scoring.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

# 2 layers, h=8, 2 query heads of 4, 1 KV head, MLP 16, vocab 10
CONFIG = SimpleNamespace(hidden_size=8, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         head_dim=4, intermediate_size=16, vocab_size=10)


def test_layer_costs_count_every_projection():
    linear, attn = bench.layer_costs(CONFIG)
    # q 8x8, k and v 8x4 each, o 8x8, gate/up/down 8x16 each; 2 FLOPs per MAC, 2 layers
    assert linear == 2 * 2 * (64 + 2 * 32 + 64 + 3 * 128)
    assert attn == 4 * 2 * 8


def test_forward_flops_split_anywhere_adds_up():
    whole = bench.forward_flops(CONFIG, 0, 12)
    assert whole == bench.forward_flops(CONFIG, 0, 5) + bench.forward_flops(CONFIG, 5, 12)
    linear, attn = bench.layer_costs(CONFIG)
    assert whole == 12 * linear + attn * sum(range(1, 13))  # token t attends to t+1 keys


def test_needed_flops_counts_a_shared_prefix_once():
    seqs = [[1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 5, 8, 9, 10]]  # 5 shared tokens
    head = 2 * CONFIG.hidden_size * CONFIG.vocab_size
    want = (bench.forward_flops(CONFIG, 0, 5) + bench.forward_flops(CONFIG, 5, 7) + bench.forward_flops(CONFIG, 5, 8)
            + 2 * head)
    assert bench.needed_flops(CONFIG, [seqs]) == want
    assert want < bench.forward_flops(CONFIG, 0, 7) + bench.forward_flops(CONFIG, 0, 8) + 2 * head


def test_update_passes_count_what_each_estimator_runs():
    appo = SimpleNamespace(ppo_epochs=4, mini_batch_size=4, init_kl_coef=0.2)
    assert bench.update_passes(appo) == 2 + 2 * 4  # old + reference pass, 4 x (forward + backward)
    grpo = SimpleNamespace(ppo_epochs=1, mini_batch_size=None, init_kl_coef=0.04)
    assert bench.update_passes(grpo) == 1 + 2  # the reference pass, one forward + backward
    assert bench.update_passes(SimpleNamespace(ppo_epochs=1, mini_batch_size=None, init_kl_coef=0.0)) == 2
    assert bench.update_passes(SimpleNamespace(ppo_epochs=1, mini_batch_size=2, init_kl_coef=0.0)) == 1 + 2 * 2
