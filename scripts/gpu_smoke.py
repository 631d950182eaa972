"""GPU smoke test: the paths no CPU-only machine can run, in under ten minutes.

    python scripts/gpu_smoke.py [--data ../shared/data] [--timeout 600]

On whatever CUDA device exists, with the embedded model (no hub access): (1) a 2-step APPO
`promptrl train` with agent and target on the GPU (bf16 target, fp32 agent, PPO update, anchor
check, checkpoint, resume of the finished run); (2) `promptrl eval` with the target served by
vLLM in-process. Exits non-zero on the first failure and prints what failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TRAIN = ["task=sst2", "agent=smollm2-135m", "target=smollm2-135m", "algo=appo", "algo.epochs=1", "algo.batch_size=16",
         "algo.update_term=1", "algo.prompts_per_step=2", "algo.anchor_eval_prompts=2", "algo.ppo_epochs=1",
         "agent.max_new_tokens=16", "agent.device=cuda", "target.device=cuda", "target.dtype=bfloat16",
         "task.max_test_examples=64", "checkpoint_every=1", "logger.progress=false"]


def run(args: list[str], env: dict, timeout: float) -> None:
    start = time.time()
    print("+ promptrl", " ".join(args), flush=True)
    r = subprocess.run([sys.executable, "-m", "promptrl.cli", *args], env=env, timeout=timeout, text=True,
                       capture_output=True)
    print(f"  exit {r.returncode} in {time.time() - start:.0f} s", flush=True)
    if r.returncode != 0:
        print(r.stdout[-2000:], r.stderr[-6000:], sep="\n", file=sys.stderr)
        sys.exit(f"gpu_smoke: FAILED: promptrl {args[0]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("PROMPTRL_DATA", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--timeout", type=float, default=600, help="seconds for each command")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu_smoke: no CUDA device is visible (torch.cuda.is_available() is False)")
    print(f"gpu_smoke: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    env = {**os.environ, "PROMPTRL_DATA": args.data, "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        run(["train", *TRAIN, f"hydra.run.dir={out / 'train'}"], env, args.timeout)
        res = json.loads((out / "train" / "results.json").read_text())
        assert res["steps"] == 2 and 0 <= res["test_accuracy"] <= 1, res
        run(["train", f"resume={out / 'train'}", f"hydra.run.dir={out / 'resume'}", "logger.progress=false"], env,
            args.timeout)
        run(["eval", "task=sst2", "target=smollm2-135m", "target.backend=vllm", "target.device=cuda",
             "target.vllm.gpu_memory_utilization=0.3", "task.max_test_examples=64", f"hydra.run.dir={out / 'eval'}"],
            env, args.timeout)
        print(f"gpu_smoke: OK (train test accuracy {res['test_accuracy']:.3f} on 64 examples)")


if __name__ == "__main__":
    main()
