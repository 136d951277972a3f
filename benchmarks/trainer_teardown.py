"""How often a 2-process CPU run of `examples/run_pretraining.py` (transformers.Trainer) fails at exit, with and
without `MIMTrainer.end_training()` (wait for every process, free DDP's wrapper, destroy the process group).

    python benchmarks/trainer_teardown.py --runs 16

Each run is `accelerate launch --multi_gpu --num_processes 2` of the example on a tiny MAE for 4 steps with a
checkpoint every 2 (what tests/test_trainer_path.py runs). The variant without the teardown runs the same script
with `end_training` replaced by a no-op, so Trainer leaves the process group to interpreter exit. The two variants
alternate. A run fails when it exits non-zero or outlives --timeout.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "run_pretraining.py"
# the example, with MIMTrainer.end_training a no-op (what Trainer alone does at the end of a script)
WITHOUT_TEARDOWN = f"""
import runpy
from hf_mim.training.hf_trainer import MIMTrainer
MIMTrainer.end_training = lambda self: None
runpy.run_path({str(SCRIPT)!r}, run_name="__main__")
"""
TINY = "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64"


def run_once(script: Path, out: Path, timeout: float) -> tuple[str, float]:
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script)]
    args = ["--config_overrides", TINY, "--output_dir", str(out), "--per_device_train_batch_size", "8"]
    args += ["--max_steps", "4", "--save_steps", "2", "--logging_steps", "1", "--report_to", "none"]
    args += ["--disable_tqdm", "true"]
    start = time.perf_counter()
    try:
        result = subprocess.run([*launch, *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "hung", time.perf_counter() - start
    if result.returncode == 0:
        return "ok", time.perf_counter() - start
    aborted = "terminate called without an active exception" in result.stderr
    return ("aborted" if aborted else f"exit {result.returncode}"), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=16, help="runs of each variant")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before a run counts as hung")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    outcomes: dict[str, list[str]] = {"with end_training": [], "without": []}
    with tempfile.TemporaryDirectory() as tmp:
        without = Path(tmp, "without_teardown.py")
        without.write_text(WITHOUT_TEARDOWN)
        for i in range(args.runs):
            for name, script in (("with end_training", SCRIPT), ("without", without)):
                outcome, seconds = run_once(script, Path(tmp, f"out-{i}"), args.timeout)
                outcomes[name].append(outcome)
                print(f"run {i + 1:2d} {name:17s} {outcome:8s} {seconds:5.1f}s", flush=True)
    import torch

    print(
        f"\n`python benchmarks/trainer_teardown.py --runs {args.runs}`: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}\n"
    )
    print("| variant | runs | ok | aborted at exit | other failures |\n|---|---|---|---|---|")
    for name, results in outcomes.items():
        aborted = results.count("aborted")
        other = len(results) - results.count("ok") - aborted
        print(f"| {name} | {len(results)} | {results.count('ok')} | {aborted} | {other} |")


if __name__ == "__main__":
    main()
