"""Feature-extraction throughput: `extract_features` (JPEG decoding included) for ViT-B/16 at 112 px,
against what the fp32 GEMM rate measured in the same run allows for the model's FLOPs, against a plain
batch-1 fp32 loop, and the optional int8 dynamic-quantisation path (speed-up and cosine fidelity).

    python benchmarks/bench_extract.py [--quick] [--frames 256] [--size base]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from affectmae.models.fast_linear import onednn_available, onednn_linear


def gemm_gflops(seconds: float = 3.0) -> float:
    """The machine's fp32 matmul rate with ViT-B-like shapes (tokens x 768 @ 768 x 3072): the faster of
    PyTorch's ``a @ b`` (MKL on x86) and oneDNN's matmul, each run for half of ``seconds``. On AMD CPUs
    with AVX-512, MKL takes its slower AVX2 path (docs/benchmarks.md), and our encoder's linear layers
    use oneDNN there (``affectmae.models.fast_linear``), so ``a @ b`` alone would understate the bound."""
    a, b = torch.randn(32 * 50, 768), torch.randn(768, 3072)
    bt = b.t().contiguous()
    products = [lambda: a @ b]
    if onednn_available():
        products.append(lambda: onednn_linear(a, bt, None))
    rates = []
    for product in products:
        for _ in range(3):
            product()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / len(products):
            product()
            n += 1
        rates.append(2 * a.shape[0] * a.shape[1] * b.shape[1] * n / (time.perf_counter() - t0) / 1e9)
    return max(rates)


def model_flops(encoder, img_size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        encoder.forward_features(torch.randn(1, 3, img_size, img_size))
    return float(counter.get_total_flops())


def write_frames(root: Path, videos: int, frames: int, size: int) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    for v in range(videos):
        folder = root / "cropped_aligned" / f"bench{v}"
        folder.mkdir(parents=True)
        for k in range(frames):
            img = np.clip(base.astype(int) + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"{k + 1:05d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer frames (about a minute)")
    parser.add_argument("--frames", type=int, default=None, help="frames to extract (default 640, quick 128)")
    parser.add_argument("--size", default="base", help="encoder size (base = ViT-B/16)")
    parser.add_argument("--img-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    frames = args.frames or (128 if args.quick else 640)

    from affectmae.features.extract import ExtractConfig, extract_features, quantize_encoder
    from affectmae.features.store import FeatureStore
    from affectmae.models.preprocess import preprocess_frames
    from affectmae.models.vit import build_encoder, save_encoder

    torch.manual_seed(0)
    encoder = build_encoder(args.size, img_size=args.img_size).eval()
    flops = model_flops(encoder, args.img_size)
    tmp = Path(tempfile.mkdtemp(prefix="bench_extract_"))
    try:
        write_frames(tmp, 2, frames // 2, args.img_size)
        save_encoder(encoder, tmp / "enc.safetensors")
        cfg = ExtractConfig(encoder=str(tmp / "enc.safetensors"), frames=str(tmp), out=str(tmp / "feats"),
                            batch_size=args.batch_size)
        # warm-up (oneDNN primitive creation on the first batches), as a long extraction amortises it
        extract_features(ExtractConfig(**{**cfg.__dict__, "out": str(tmp / "warm"), "videos": ["bench1"]}))
        # the GEMM rate right before and right after the timed extraction (the machine is shared and noisy)
        gemm_before = gemm_gflops(2.0 if args.quick else 3.0)
        summary = extract_features(cfg)
        gemm = (gemm_before + gemm_gflops(2.0 if args.quick else 3.0)) / 2
        # the alternative: a thread decoding ahead of the encoder (the GPU default), side by side
        threaded = extract_features(ExtractConfig(**{**cfg.__dict__, "out": str(tmp / "feats_thread"), "decode_threads": 1}))
        bound = gemm * 1e9 / flops
        fps = summary["frames"] / summary["seconds"]

        # baseline: a plain loop, one frame at a time (decode, preprocess, fp32 forward)
        paths = sorted((tmp / "cropped_aligned" / "bench0").glob("*.jpg"))[: max(16, frames // 8)]
        t0 = time.perf_counter()
        with torch.inference_mode():
            for p in paths:
                img = np.array(Image.open(p).convert("RGB"))
                encoder.forward_features(preprocess_frames(img[None], args.img_size))
        fps_b1 = len(paths) / (time.perf_counter() - t0)

        # int8 dynamic quantisation of the Linear layers
        qenc = quantize_encoder(encoder, "int8")  # what `extract --quantize int8` runs
        feats, _ = FeatureStore(tmp / "feats").load("bench0")
        imgs = np.stack([np.array(Image.open(p).convert("RGB")) for p in paths[:args.batch_size]])
        x = preprocess_frames(imgs, args.img_size)
        with torch.inference_mode():
            ref = encoder.forward_features(x)["pooled"]
            t0 = time.perf_counter()
            for _ in range(2):
                encoder.forward_features(x)
            t_fp32 = (time.perf_counter() - t0) / 2
            q = qenc.forward_features(x)["pooled"]
            t0 = time.perf_counter()
            for _ in range(2):
                qenc.forward_features(x)
            t_int8 = (time.perf_counter() - t0) / 2
        cos = torch.nn.functional.cosine_similarity(q, ref, dim=1)
        stored = torch.nn.functional.cosine_similarity(torch.from_numpy(feats[: len(x)].astype(np.float32)), ref, dim=1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "encoder": f"ViT-{args.size}/16 @ {args.img_size}px, batch {args.batch_size}",
        "gflop_per_frame": round(flops / 1e9, 3),
        "gemm_gflops": round(gemm, 1),
        "gemm_bound_frames_per_s": round(bound, 2),
        "extract_frames_per_s": round(fps, 2),
        "extract_vs_gemm_bound": round(fps / bound, 3),
        "extract_decode_thread_frames_per_s": round(threaded["frames"] / threaded["seconds"], 2),
        "batch1_loop_frames_per_s": round(fps_b1, 2),
        "extract_vs_batch1": round(fps / fps_b1, 2),
        "model_only_frames_per_s": round(len(x) / t_fp32, 2),
        "extract_vs_model_only": round(fps * t_fp32 / len(x), 3),
        "int8_speedup_vs_fp32_batch": round(t_fp32 / t_int8, 2),
        "int8_cosine_min": round(float(cos.min()), 4),
        "int8_cosine_mean": round(float(cos.mean()), 4),
        "stored_float16_cosine_min": round(float(stored.min()), 5),
        "frames": summary["frames"],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
