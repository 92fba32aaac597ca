"""MAE pretraining throughput: our training step vs. the machine's fp32 GEMM rate and vs. a
reference-style MAE step (timm Blocks wired as facebookresearch/mae writes it), measured in one run.

    .venv/bin/python benchmarks/bench_pretrain.py [--quick] [--size base] [--img-size 112] [--batch 32]

The step is forward + backward + AdamW update with 75 % masking and the 512-d, 8-block decoder. FLOPs
come from ``torch.utils.flop_counter.FlopCounterMode`` (matrix products and attention). The two steps
are timed in alternating rounds and the medians compared, because shared machines are noisy. On a GPU
the script also reports bf16-autocast img/s and the fraction of the GPU's bf16 matmul rate.

The machine's GEMM rate is the faster of PyTorch's ``a @ b`` (MKL on x86) and oneDNN's matmul on the same
2048^3 fp32 product: on AMD CPUs with AVX-512, MKL runs its AVX2 path at about half of what oneDNN reaches,
so ``a @ b`` alone would understate the machine. Our step takes oneDNN for its linear layers where
``affectmae.models.fast_linear`` finds it faster (``AFFECTMAE_CPU_GEMM=aten`` turns that off); the
reference-style step uses plain ``nn.Linear``, as facebookresearch/mae does.

``linear_layers_alone_*`` times every linear layer of our step by itself (forward + backward at the
shapes one step gives it) and sums them; ``step_ceiling_fraction_of_gemm`` is the step's FLOPs over that
time, i.e. the fraction of the GEMM rate the whole step would reach if nothing else in it took any time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
import torch.nn as nn
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch.utils.flop_counter import FlopCounterMode

from affectmae.models.fast_linear import cpu_gemm_backend, fast_linear, onednn_available, onednn_linear, time_best
from affectmae.models.mae import MaskedAutoencoder
from affectmae.models.vit import build_encoder, sincos_pos_embed_2d
from affectmae.training.memory import keep_freed_memory
from affectmae.training.optim import make_adamw


class ReferenceStyleMAE(nn.Module):
    """The reference MAE's structure (PatchEmbed, cls token, fixed pos embeds, timm Blocks, argsort masking)."""

    def __init__(self, img_size: int, dim: int, depth: int, heads: int, dec_dim: int = 512, dec_depth: int = 8,
                 dec_heads: int = 16, patch: int = 16):
        super().__init__()
        self.patch = patch
        self.patch_embed = PatchEmbed(img_size, patch, 3, dim)
        n = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(sincos_pos_embed_2d(dim, img_size // patch), requires_grad=False)
        self.blocks = nn.ModuleList([Block(dim, heads, 4.0, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_embed = nn.Linear(dim, dec_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_dim))
        self.decoder_pos_embed = nn.Parameter(sincos_pos_embed_2d(dec_dim, img_size // patch), requires_grad=False)
        self.decoder_blocks = nn.ModuleList([Block(dec_dim, dec_heads, 4.0, qkv_bias=True) for _ in range(dec_depth)])
        self.decoder_norm = nn.LayerNorm(dec_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(dec_dim, patch * patch * 3)
        self.n = n

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75) -> torch.Tensor:
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:]
        B, L, D = x.shape
        keep = int(L * (1 - mask_ratio))
        ids_shuffle = torch.argsort(torch.rand(B, L), dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        x = torch.gather(x, 1, ids_shuffle[:, :keep, None].expand(-1, -1, D))
        mask = torch.ones(B, L)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(B, -1, -1)
        x = torch.cat([cls, x], 1)
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_embed(self.norm(x))
        tokens = torch.cat([x[:, 1:], self.mask_token.expand(B, L - keep, -1)], 1)
        tokens = torch.gather(tokens, 1, ids_restore[:, :, None].expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], tokens], 1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        pred = self.decoder_pred(self.decoder_norm(x))[:, 1:]
        p, h = self.patch, imgs.shape[2] // self.patch
        target = imgs.reshape(B, 3, h, p, h, p).permute(0, 2, 4, 3, 5, 1).reshape(B, h * h, p * p * 3)
        loss = ((pred - target) ** 2).mean(-1)
        return (loss * mask).sum() / mask.sum()


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gemm_gflops(n: int, repeats: int, dtype=torch.float32, device="cpu", onednn: bool = False) -> float:
    """Best rate of ``repeats`` n^3 products: ``a @ b`` (PyTorch's BLAS), or oneDNN's matmul if ``onednn``."""
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    bt = b.t().contiguous()
    product = (lambda: onednn_linear(a, bt, None)) if onednn else (lambda: a @ b)
    product()
    rates = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        product()
        _sync(device)
        rates.append(2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return max(rates)


def _sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def make_step(model: nn.Module, imgs: torch.Tensor, ours: bool, amp: bool = False):
    """Ours: the optimizer our trainer builds (fused AdamW where available); reference: plain AdamW."""
    params = [p for p in model.parameters() if p.requires_grad]
    if ours:
        opt = make_adamw([{"params": params}], 1e-4, (0.9, 0.95))
    else:
        opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95))

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = model(imgs, 0.75)[0] if ours else model(imgs, 0.75)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def step_flops(step) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def linear_only(model: nn.Module, imgs: torch.Tensor, repeats: int = 5) -> tuple[float, int]:
    """The step's linear layers alone: (seconds, FLOPs) of each layer's forward + backward at the shapes
    one step gives it, timed in isolation (best of ``repeats``) and summed. Nothing else a step does (the
    optimizer update, attention, GELU, LayerNorm, residual adds) is in it, so ``FLOPs / seconds`` is an
    upper bound on the whole step's rate with these GEMM kernels."""
    shapes: dict[tuple[int, int, int], int] = {}

    def record(module, inputs, output):
        key = (inputs[0].numel() // module.in_features, module.in_features, module.out_features)
        shapes[key] = shapes.get(key, 0) + 1

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        model(imgs, 0.75)
    for hook in hooks:
        hook.remove()
    total_s, total_flops = 0.0, 0
    for (m, k, n), count in shapes.items():
        x = torch.randn(m, k, requires_grad=True)
        w, b = torch.randn(n, k, requires_grad=True), torch.randn(n, requires_grad=True)
        grad = torch.randn(m, n)

        def layer(x=x, w=w, b=b, grad=grad) -> None:  # bind this iteration's tensors
            fast_linear(x, w, b).backward(grad)
            x.grad = w.grad = b.grad = None

        total_s += count * time_best(layer, repeats)
        total_flops += count * 6 * m * k * n
    return total_s, total_flops


def time_steps(step, n: int, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    _sync(device)
    return (time.perf_counter() - t0) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="base")
    parser.add_argument("--img-size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (about 1-2 minutes on 2 cores)")
    args = parser.parse_args()
    rounds, per_round = (2, 2) if args.quick else (4, 4)
    keep_freed_memory()  # as `affectmae pretrain` does on CPU; process-wide, so both steps get it
    torch.manual_seed(0)
    print(json.dumps({"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "load_avg_1min": os.getloadavg()[0]}))

    ours = MaskedAutoencoder(build_encoder(args.size, args.img_size), 512, 8, 16, norm_pix_loss=False).train()
    enc = ours.encoder
    ref = ReferenceStyleMAE(args.img_size, enc.embed_dim, len(enc.blocks), enc.blocks[0].attn.num_heads).train()
    imgs = torch.randn(args.batch, 3, args.img_size, args.img_size)
    step_ours, step_ref = make_step(ours, imgs, True), make_step(ref, imgs, False)
    flops = step_flops(step_ours)
    flops_ref = step_flops(step_ref)
    has_onednn = onednn_available()
    gemm_aten, gemm_dnnl, t_ours, t_ref = [], [], [], []
    for _ in range(rounds):  # alternate, so all see the same machine load
        gemm_aten.append(gemm_gflops(2048, 3))
        if has_onednn:
            gemm_dnnl.append(gemm_gflops(2048, 3, onednn=True))
        t_ours.append(time_steps(step_ours, per_round, "cpu"))
        t_ref.append(time_steps(step_ref, per_round, "cpu"))
    lin_s, lin_flops = linear_only(ours, imgs)
    ga = statistics.median(gemm_aten)
    gd = statistics.median(gemm_dnnl) if gemm_dnnl else 0.0
    g, to, tr = max(ga, gd), statistics.median(t_ours), statistics.median(t_ref)
    print(json.dumps({
        "workload": f"MAE step ViT-{args.size} {args.img_size}px batch {args.batch}, fp32 CPU",
        "cpu_gemm_backend": cpu_gemm_backend(),
        "gemm_gflops": round(g, 1), "gemm_gflops_aten": round(ga, 1), "gemm_gflops_onednn": round(gd, 1),
        "step_gflop": round(flops / 1e9, 1), "ref_step_gflop": round(flops_ref / 1e9, 1),
        "ours_img_per_s": round(args.batch / to, 2), "ours_gflops": round(flops / to / 1e9, 1),
        "ours_fraction_of_gemm": round(flops / to / 1e9 / g, 3),
        "ref_img_per_s": round(args.batch / tr, 2), "ref_gflops": round(flops_ref / tr / 1e9, 1),
        "ref_fraction_of_gemm": round(flops_ref / tr / 1e9 / g, 3),
        "ours_vs_ref_speed": round(tr / to, 3),
        "linear_layers_alone_s": round(lin_s, 3), "linear_layers_alone_gflops": round(lin_flops / lin_s / 1e9, 1),
        "linear_layers_alone_fraction_of_gemm": round(lin_flops / lin_s / 1e9 / g, 3),
        "step_ceiling_fraction_of_gemm": round(flops / lin_s / 1e9 / g, 3),
        "rounds_s_per_step": {"ours": [round(t, 3) for t in t_ours], "ref": [round(t, 3) for t in t_ref],
                              "gemm_gflops_aten": [round(x, 1) for x in gemm_aten],
                              "gemm_gflops_onednn": [round(x, 1) for x in gemm_dnnl]},
    }))

    if torch.cuda.is_available():
        dev = torch.device("cuda")
        batch = 256
        model = MaskedAutoencoder(build_encoder(args.size, args.img_size), 512, 8, 16).to(dev).train()
        imgs_gpu = torch.randn(batch, 3, args.img_size, args.img_size, device=dev)
        step = make_step(model, imgs_gpu, True, amp=torch.cuda.is_bf16_supported())
        gpu_flops = step_flops(step)
        time_steps(step, 3, dev)
        t = time_steps(step, 10 if not args.quick else 5, dev)
        peak = gemm_gflops(8192, 5, torch.bfloat16, dev)
        print(json.dumps({"workload": f"MAE step ViT-{args.size} {args.img_size}px batch {batch}, bf16 autocast",
                          "gpu": torch.cuda.get_device_name(), "img_per_s": round(batch / t, 1),
                          "tflops": round(gpu_flops / t / 1e12, 1), "bf16_gemm_tflops": round(peak / 1e3, 1),
                          "fraction_of_bf16_gemm": round(gpu_flops / t / 1e9 / peak, 3)}))


if __name__ == "__main__":
    main()
