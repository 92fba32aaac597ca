"""Temporal-model training throughput (segments/s) at the paper's scale: 768-d features, w=300, batch 32,
TCN [512, 256] + 2-layer Transformer, multi-task heads; the same run measures the fp32 GEMM rate and
the model's FLOPs per training step, so the figure can be read as a fraction of what the CPU allows.

    python benchmarks/bench_temporal.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from bench_extract import gemm_gflops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="batch 8 and 3 steps")
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()
    from torch.utils.flop_counter import FlopCounterMode

    from affectmae.losses import multitask_loss
    from affectmae.models.temporal import TemporalConfig, TemporalModel

    batch, window = (8 if args.quick else 32), 300
    steps = args.steps or (3 if args.quick else 6)
    torch.manual_seed(0)
    model = TemporalModel(TemporalConfig(input_dim=768, tasks=["va", "expr", "au"]))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-5, weight_decay=1e-5)
    x = torch.randn(batch, window, 768)
    real = torch.ones(batch, window, dtype=torch.bool)
    targets = {"va": torch.rand(batch, window, 2) * 2 - 1, "expr": torch.randint(0, 8, (batch, window, 1)).float(),
               "au": torch.randint(0, 2, (batch, window, 12)).float()}
    masks = {t: real for t in targets}

    def step() -> None:
        loss, _ = multitask_loss(model(x, real, real), targets, masks)
        opt.zero_grad()
        loss.backward()
        opt.step()

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    gemm = gemm_gflops(2.0 if args.quick else 3.0)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - t0) / steps
    print(json.dumps({
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "model": "TCN [512, 256] k3 + Transformer 2x256 (4 heads) + 3 heads, input 768, w=300",
        "batch": batch,
        "train_segments_per_s": round(batch / seconds, 2),
        "gflop_per_step": round(flops / 1e9, 2),
        "achieved_gflops": round(flops / seconds / 1e9, 1),
        "gemm_gflops": round(gemm, 1),
        "fraction_of_gemm_rate": round(flops / seconds / 1e9 / gemm, 3),
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
    }, indent=2))


if __name__ == "__main__":
    main()
