"""Temporal-model training throughput (segments/s) at the paper's scale: 768-d features, w=300, batch 32,
TCN [512, 256] + 2-layer Transformer, multi-task heads; the same run measures the fp32 GEMM rate and
the model's FLOPs per training step, so the figure can be read as a fraction of what the CPU allows.

Side by side, in alternating rounds, on the same weights and data:

- ``sdpa``: the model as it is (attention through ``F.scaled_dot_product_attention``, FastLinear layers);
- ``torch``: the model as it was (``nn.TransformerEncoder``, plain ``nn.Linear``; ``--attention torch``);
- ``sdpa, no attention dropout`` (``--no-attn-dropout``): the same model with dropout off on the attention
  probabilities only, which lets SDPA take its fused kernel on CPU (informational: it changes training).

For each: the whole model's inference (eval, no gradients), the whole training step (forward, backward,
AdamW) and the Transformer alone (its linear layers and attention, forward + backward on the TCN's
(B, T, 256) output). Each round measures the GEMM rate for 1 s, then times one call of every variant; a
fraction of GEMM is the median over rounds of (nominal FLOPs / seconds) / that round's GEMM rate, and the
speed ratio the median over rounds of the back-to-back time ratio (the machine is shared and its load moves).

    python benchmarks/bench_temporal.py [--quick] [--attention both|sdpa|torch] [--no-attn-dropout]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench_extract import gemm_gflops

WIDTH = 256  # the TCN's output width = the Transformer's width


def build_variants(names: list[str], no_attn_dropout: bool) -> dict[str, torch.nn.Module]:
    """One model per variant, all with the weights of the first (seed 0)."""
    from affectmae.models import temporal
    from affectmae.models.fast_linear import use_fast_linear

    cfg = temporal.TemporalConfig(input_dim=768, tasks=["va", "expr", "au"])
    torch.manual_seed(0)
    reference = temporal.TemporalModel(cfg)
    models = {}
    for name in names:
        model = temporal.TemporalModel(cfg)
        if name == "torch":  # the pre-change module and plain nn.Linear, as the code was
            model.transformer = temporal.TorchTransformerEncoder(WIDTH, cfg.transformer_heads, cfg.transformer_ff,
                                                                 cfg.dropout, cfg.transformer_layers)
            use_fast_linear(model, enabled=False)
        model.load_state_dict(reference.state_dict())
        models[name] = model
    if no_attn_dropout and "sdpa" in names:
        model = temporal.TemporalModel(cfg)
        model.load_state_dict(reference.state_dict())
        for layer in model.transformer.layers:
            layer.self_attn.dropout = 0.0
        models["sdpa, no attention dropout"] = model
    return models


def make_step(model, batch: int, window: int):
    """A training step (forward, multi-task loss, backward, AdamW) on fixed random data, all frames real."""
    from affectmae.training.losses import multitask_loss

    g = torch.Generator().manual_seed(1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-5, weight_decay=1e-5)
    x = torch.randn(batch, window, 768, generator=g)
    real = torch.ones(batch, window, dtype=torch.bool)
    targets = {"va": torch.rand(batch, window, 2, generator=g) * 2 - 1,
               "expr": torch.randint(0, 8, (batch, window, 1), generator=g).float(),
               "au": torch.randint(0, 2, (batch, window, 12), generator=g).float()}
    masks = {t: real for t in targets}

    def step() -> None:
        loss, _ = multitask_loss(model(x, real, real), targets, masks)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def make_transformer_pass(model, batch: int, window: int):
    """Forward + backward of the Transformer alone (linear layers, attention, LayerNorm, residuals)."""
    x = torch.randn(batch, window, WIDTH, generator=torch.Generator().manual_seed(2), requires_grad=True)
    real = torch.ones(batch, window, dtype=torch.bool)
    grad = torch.randn(batch, window, WIDTH, generator=torch.Generator().manual_seed(3))

    def run() -> None:
        model.transformer(x, real, model.cfg.causal).backward(grad)
        x.grad = None
        model.zero_grad(set_to_none=True)

    return run


def make_inference(model, batch: int, window: int):
    """The whole model in eval mode without gradients (what ``predict`` and ``analyze`` run)."""
    x = torch.randn(batch, window, 768, generator=torch.Generator().manual_seed(4))
    real = torch.ones(batch, window, dtype=torch.bool)

    def run() -> None:
        model.eval()
        with torch.no_grad():
            model(x, real, real)
        model.train()

    return run


def count_flops(fn) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def seconds_per_call(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 8, 3 rounds")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (one timed call per variant each)")
    parser.add_argument("--attention", choices=["both", "sdpa", "torch"], default="both")
    parser.add_argument("--no-attn-dropout", action="store_true", help="also time sdpa without attention dropout")
    args = parser.parse_args()
    from affectmae.models.fast_linear import cpu_gemm_backend

    batch, window = (8 if args.quick else 32), 300
    rounds = args.rounds or (3 if args.quick else 5)
    names = ["sdpa", "torch"] if args.attention == "both" else [args.attention]
    load_start = [round(v, 2) for v in os.getloadavg()]
    models = build_variants(names, args.no_attn_dropout)
    steps_fn = {n: make_step(m.train(), batch, window) for n, m in models.items()}
    parts_fn = {n: make_transformer_pass(m, batch, window) for n, m in models.items()}
    infer_fn = {n: make_inference(m, batch, window) for n, m in models.items()}
    # nominal FLOPs from the pre-change model when it is timed (its attention is counted as bmm), else ours
    counted = "torch" if "torch" in models else next(iter(models))
    step_flops, part_flops = count_flops(steps_fn[counted]), count_flops(parts_fn[counted])
    infer_flops = count_flops(infer_fn[counted])

    for fn in [*steps_fn.values(), *parts_fn.values(), *infer_fn.values()]:
        fn()  # warm-up (allocations, oneDNN primitive cache)
    # one call of each variant in turn, `rounds` times, each round after its own short GEMM measurement: a
    # change in the machine's load (it is shared) hits the variants and their GEMM reference alike
    times = {kind: {n: [] for n in models} for kind in ("step", "transformer", "inference")}
    gemm_rounds = []
    for _ in range(rounds):
        gemm_rounds.append(gemm_gflops(1.0))
        for kind, fns in (("step", steps_fn), ("transformer", parts_fn), ("inference", infer_fn)):
            for name, fn in fns.items():
                times[kind][name].append(seconds_per_call(fn))
    flops = {"step": step_flops, "transformer": part_flops, "inference": infer_flops}

    def fraction(kind: str, name: str) -> float:
        """Median over rounds of (FLOPs / seconds) / that round's GEMM rate."""
        rates = (flops[kind] / t / 1e9 / g for t, g in zip(times[kind][name], gemm_rounds, strict=True))
        return round(statistics.median(rates), 3)

    results = {}
    for name in models:
        results[name] = {
            "train_segments_per_s_median": round(batch / statistics.median(times["step"][name]), 2),
            "step_s_per_round": [round(t, 3) for t in times["step"][name]],
            "step_fraction_of_gemm": fraction("step", name),
            "transformer_ms_median": round(statistics.median(times["transformer"][name]) * 1e3, 1),
            "transformer_fraction_of_gemm": fraction("transformer", name),
            "infer_segments_per_s_median": round(batch / statistics.median(times["inference"][name]), 2),
            "infer_fraction_of_gemm": fraction("inference", name),
        }
    if "sdpa" in results and "torch" in results:  # the median over rounds of the back-to-back ratio, and best / best
        results["sdpa / torch speed"] = {
            kind: {"median_paired": round(statistics.median(t / s for t, s in zip(times[kind]["torch"],
                                                                                 times[kind]["sdpa"], strict=True)), 3),
                   "best_vs_best": round(min(times[kind]["torch"]) / min(times[kind]["sdpa"]), 3)}
            for kind in times
        }
    print(json.dumps({
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads, FastLinear backend {cpu_gemm_backend()}",
        "load_average_start_end": [load_start, [round(v, 2) for v in os.getloadavg()]],
        "model": "TCN [512, 256] k3 + Transformer 2x256 (4 heads, ff 512) + 3 heads, input 768, w=300, dropout 0.3",
        "batch": batch, "rounds": rounds,
        "gflop_per_step": round(step_flops / 1e9, 2),
        "transformer_gflop_per_pass": round(part_flops / 1e9, 2),
        "flops_counted_on": counted,
        "gemm_gflops_per_round": [round(g, 1) for g in gemm_rounds],
        "results": results,
        "params_m": round(sum(p.numel() for p in next(iter(models.values())).parameters()) / 1e6, 2),
    }, indent=2))


if __name__ == "__main__":
    main()
