"""How often a 2-process gloo run hangs at exit when DDP's reducer frees the process group (pytorch/pytorch#56297),
and whether freeing the wrapper before destroy_process_group (what hf_mim's pretrain does) avoids it.

    python benchmarks/gloo_teardown_hang.py --runs 30

Each run is `torchrun --nproc_per_node 2` of this file in worker mode: a few DDP steps, an all_gather, a barrier,
destroy_process_group, exit. A run counts as hung when it has not finished within --timeout seconds.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import time


def worker(free_wrapper_first: bool) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo")
    model = DistributedDataParallel(torch.nn.Linear(8, 8))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        model(torch.randn(4, 8)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    gathered = [torch.zeros(2) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, torch.ones(2))
    dist.barrier()
    if free_wrapper_first:
        del model, optimizer
        gc.collect()
    dist.destroy_process_group()
    # without the del above, the DDP wrapper (and its reducer) is freed here, when the frame goes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--timeout", type=float, default=30)
    parser.add_argument("--worker", choices=["plain", "free-first"])
    args = parser.parse_args()
    if args.worker:
        worker(args.worker == "free-first")
        return
    for variant in ("plain", "free-first"):
        hung, start = 0, time.perf_counter()
        for i in range(args.runs):
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
            cmd += ["--master_port", str(29900 + i), __file__, "--worker", variant]
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            try:
                proc.wait(timeout=args.timeout)
            except subprocess.TimeoutExpired:
                hung += 1
                os.killpg(proc.pid, 9)
                subprocess.run(["pkill", "-9", "-f", f"--worker {variant}"], check=False)
                proc.wait()
        print(f"{variant:>10}: {hung}/{args.runs} runs hung ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
