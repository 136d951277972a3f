"""Which geometries every method accepts: a config from `image_size`, `patch_size` and four ViT sizes alone, for
every image of 16-224 px and every patch size of 2-16 px that divides it, then a training forward and backward of
the pretraining model on the geometries of at most 100 patches among a sample of image sizes.

    python benchmarks/geometry_coverage.py

prints, per method, the configs refused (and the first reasons) and the forwards that failed. Issue 31's figures
(benchmarks/RESULTS.md) come from it, run on the code before and after.
"""

from __future__ import annotations

import argparse
import collections
import logging
import time

import torch

from hf_mim.modeling import METHOD_SPECS, MIMConfig

VIT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
FORWARD_SIZES = (16, 18, 20, 21, 24, 27, 28, 30, 32, 36, 42, 45, 48, 56, 60, 64, 70)


def fields(spec, image_size: int, patch_size: int) -> dict:
    base = dict(image_size=image_size, patch_size=patch_size)
    return {**base, **VIT} if issubclass(spec.config_class, MIMConfig) else base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reasons", type=int, default=2, help="reasons shown per method and stage")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # BEiT's warning about its untrained default tokenizer, once per model
    torch.manual_seed(0)
    geometries = [(s, p) for s in range(16, 225) for p in range(2, 17) if s % p == 0]
    forwards = [(s, p) for s in FORWARD_SIZES for p in range(2, 17) if s % p == 0 and 2 <= s // p <= 10]
    print(f"{len(geometries)} geometries per method; forwards on {len(forwards)} of them")
    print("| method | configs refused | forwards failed | seconds |\n| --- | ---: | ---: | ---: |")
    reasons = collections.defaultdict(list)
    for name, spec in METHOD_SPECS.items():
        start, refused, failed = time.perf_counter(), 0, 0
        for size, patch in geometries:
            try:
                spec.config_class(**fields(spec, size, patch))
            except Exception as error:  # noqa: BLE001 - a tally: any failure counts, and its reason is shown
                refused += 1
                reasons[name, "config"].append(f"{size}/{patch}: {type(error).__name__}: {error}"[:200])
        for size, patch in forwards:
            try:
                config = spec.config_class(**fields(spec, size, patch))
                out = spec.pretraining_class(config).train()(pixel_values=torch.randn(2, 3, size, size))
                out.loss.backward()
                if not torch.isfinite(out.loss):
                    raise FloatingPointError(f"loss {out.loss.item()}")
            except Exception as error:  # noqa: BLE001
                failed += 1
                reasons[name, "forward"].append(f"{size}/{patch}: {type(error).__name__}: {error}"[:200])
        print(f"| {name} | {refused} | {failed} | {time.perf_counter() - start:.1f} |", flush=True)
    for (name, stage), found in reasons.items():
        for reason in found[: args.reasons]:
            print(f"{name} {stage}: {reason}")


if __name__ == "__main__":
    main()
