"""Peak memory of `extract` and `predict` on one long video: it must stay flat in the video length.

extract: a video of N frames made of symlinks to a few JPEGs, a tiny encoder (memory, not speed, is
measured). predict: a float16 (N, 768) feature file and a small temporal model. Each run is a fresh
subprocess; its peak RSS (VmHWM) is compared at N = 10k and 100k (quick: 2k and 20k).

    python benchmarks/bench_memory.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys
from pathlib import Path
stage, root = sys.argv[1], Path(sys.argv[2])
if stage == "extract":
    from affectmae.features.extract import ExtractConfig, extract_features
    s = extract_features(ExtractConfig(encoder=str(root / "enc.safetensors"), frames=str(root / "frames"),
                                       out=str(root / "feats"), batch_size=64))
    n = s["frames"]
else:
    from affectmae.inference.predict import PredictConfig, predict_submissions
    s = predict_submissions(PredictConfig(features=str(root / "pfeats"), out=str(root / "sub"), runs=[str(root / "run")]))
    n = s["va"]["rows"]
# VmHWM: this process's peak resident set (ru_maxrss would include the parent's RSS at fork time)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"frames": n, "peak_rss_mb": round(hwm / 1024, 1)}))
"""


def prepare(root: Path, n: int) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from affectmae.models.temporal import TemporalConfig, TemporalModel, save_temporal
    from affectmae.models.vit import build_encoder, save_encoder

    torch.manual_seed(0)
    save_encoder(build_encoder("tiny", img_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2),
                 root / "enc.safetensors")
    src = root / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(src / f"{i}.jpg")
    video = root / "frames" / "long"
    video.mkdir(parents=True)
    for k in range(n):
        if k % 50 != 7:  # some frames without a face
            os.symlink(src / f"{k % 4}.jpg", video / f"{k + 1:05d}.jpg")
    feats = root / "pfeats"
    feats.mkdir()
    (feats / "features.json").write_text(json.dumps({"format": "affectmae-features", "version": 1, "dim": 768}))
    arr = np.lib.format.open_memmap(feats / "long.npy", mode="w+", dtype=np.float16, shape=(n, 768))
    for s in range(0, n, 10000):
        arr[s : s + 10000] = rng.normal(size=(min(10000, n - s), 768)).astype(np.float16)
    arr.flush()
    del arr
    np.save(feats / "long.mask.npy", np.ones(n, bool))
    model = TemporalModel(TemporalConfig(input_dim=768, tasks=["va"], tcn_channels=[64, 64], transformer_ff=128,
                                         transformer_layers=1, head_hidden=32))
    (root / "run").mkdir()
    save_temporal(root / "run" / "best.safetensors", model, {"tasks": ["va"], "window": 300, "stride": 200})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2k and 20k frames")
    args = parser.parse_args()
    sizes = (2000, 20000) if args.quick else (10000, 100000)
    results = {"machine": f"{platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}"}
    for n in sizes:
        root = Path(tempfile.mkdtemp(prefix="bench_mem_"))
        try:
            prepare(root, n)
            for stage in ("extract", "predict"):
                out = subprocess.run([sys.executable, "-c", CHILD, stage, str(root)], capture_output=True, text=True,
                                     env={**os.environ, "TQDM_DISABLE": "1"})
                if out.returncode:
                    raise SystemExit(out.stderr[-3000:])
                results[f"{stage}_{n}"] = json.loads(out.stdout.strip().splitlines()[-1])
        finally:
            shutil.rmtree(root, ignore_errors=True)
    for stage in ("extract", "predict"):
        small, big = (results[f"{stage}_{n}"]["peak_rss_mb"] for n in sizes)
        results[f"{stage}_peak_ratio_{sizes[1]}_vs_{sizes[0]}"] = round(big / small, 3)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
