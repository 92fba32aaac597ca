"""`affectmae live` on a 640x360 one-face clip played at 25 frames/s, side by side with offline `analyze` on it.

    OMP_NUM_THREADS=2 python benchmarks/bench_live.py                 # 20 s clip (under 2 min in all)
    OMP_NUM_THREADS=2 python benchmarks/bench_live.py --seconds 10 --settings detect_max_side=320

The clip is `bench_analyze.py`'s (a generated face moving over a blurred background, `make_synthetic_video`,
seed 0), as long as ``--seconds`` says. The model is `bench_analyze.py`'s ViT-S/16 at 112 px (random-init:
speed does not depend on the weights) with the default temporal architecture (TCN 512-256, 2-layer
Transformer, three heads) made streaming (``causal=True``, ``history=300``). Rows:

- ``analyze``: the offline command over the file (look-ahead detection, re-identification), frames/s;
- ``analyze --causal``: the live loop over the file as fast as it runs, no frame dropped, frames/s;
- ``live --realtime``: the CLI in a subprocess playing the file at its own rate (25 frames/s), rows to a CSV
  file; latency is from a frame's arrival (its due time) to its rows being written and flushed. Frames/s is
  "in, analysed"; then ms per analysed frame of each step and each stage's busy time (stage 1: detection,
  alignment, tracking and the encoder's first k blocks; stage 2: its other blocks, temporal step, rows
  written), which say which stage sets the pace, and how many frames ran each k (``--encoder-split``, default
  auto: balanced frame by frame; ``--skip-offline --settings encoder_split=N`` fixes it).

Each row also gives the machine's load (``os.getloadavg``) at its start, and the load averages are printed
before and after, because on a shared machine other jobs slow the analysis and the latency figures with it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_streaming_model_dir(root: Path, size: str = "small", history: int = 300) -> Path:
    import torch

    from affectmae.models.temporal import TemporalConfig, TemporalModel, save_temporal
    from affectmae.models.vit import build_encoder, save_encoder

    torch.manual_seed(0)
    root.mkdir(parents=True, exist_ok=True)
    encoder = build_encoder(size, img_size=112)
    save_encoder(encoder, root / "encoder.safetensors")
    tasks = ["va", "expr", "au"]
    model = TemporalModel(TemporalConfig(input_dim=encoder.embed_dim, tasks=tasks, causal=True, history=history))
    save_temporal(root / "temporal.safetensors", model, {"tasks": tasks, "window": history, "stride": 200})
    (root / "affectmae_model.json").write_text(json.dumps({
        "format_version": 1, "affectmae_version": "bench", "encoder": "encoder.safetensors", "causal": True,
        "heads": {t: "temporal.safetensors" for t in tasks}}))
    return root


def run_offline(video: Path, model_dir: Path, settings: dict) -> dict:
    from affectmae.inference.pipeline import Analyzer

    with Analyzer(model_dir, **settings) as analyzer:
        start = time.perf_counter()
        df = analyzer.analyze(video)
        seconds = time.perf_counter() - start
    frames = int(df["frame"].nunique())
    return {"frames": frames, "seconds": seconds, "fps": frames / seconds}


def run_live(video: Path, model_dir: Path, out: Path, settings: list[str]) -> dict:
    summary = out / "live_summary.json"
    cmd = [sys.executable, "-m", "affectmae", "live", str(video), *settings, "--model", str(model_dir), "--realtime",
           "-o", str(out / "live_rows.csv"), "--summary", str(summary)]  # key=value next to SOURCE
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return json.loads(summary.read_text())


def machine() -> str:
    """CPU model, cores and whether it has AVX-512 (from /proc/cpuinfo where there is one)."""
    model, avx512 = platform.processor() or platform.machine(), "unknown"
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                     model)
        avx512 = "AVX-512" if " avx512f" in info else "no AVX-512"
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs, {avx512}"


def loads() -> str:
    return "load average " + " / ".join(f"{v:.2f}" for v in os.getloadavg()) + " (1 / 5 / 15 min)"


def main() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the clip at 25 frames/s (default 20)")
    parser.add_argument("--settings", nargs="*", default=[], help="AnalyzeConfig key=value settings for every row")
    parser.add_argument("--skip-offline", action="store_true", help="only the live row")
    args = parser.parse_args()
    import torch

    from affectmae.config import parse_overrides
    from affectmae.synth.video import make_synthetic_video

    n_frames = int(round(args.seconds * 25))
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {machine()}; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), Python {platform.python_version()}")
    print(f"before: {loads()}")
    print(f"clip: {n_frames} frames (25 frames/s), 640x360, 1 face; model ViT-S/16 112 px + streaming temporal "
          f"model; settings: {' '.join(args.settings) or 'defaults'}")
    settings = {k: v for k, v in parse_overrides(args.settings).items()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        video = make_synthetic_video(tmp / "bench.mp4", n_frames=n_frames, n_faces=1, size=(640, 360), fps=25,
                                     seed=0).path
        model_dir = make_streaming_model_dir(tmp / "model")
        print("| run | load (1 min) | frames | frames/s | dropped | latency ms p50 / p95 / max |")
        print("| --- | --- | --- | --- | --- | --- |")
        if not args.skip_offline:
            from affectmae.config import build_config
            from affectmae.inference.pipeline import AnalyzeConfig

            cfg = build_config(AnalyzeConfig, None, settings)
            for label, causal in (("analyze", False), ("analyze --causal", True)):
                load = os.getloadavg()[0]
                r = run_offline(video, model_dir, {**{k: getattr(cfg, k) for k in settings}, "plots": False,
                                                   "causal": causal})
                print(f"| {label} | {load:.2f} | {r['frames']} | {r['fps']:.1f} | - | - |", flush=True)
        load = os.getloadavg()[0]
        s = run_live(video, model_dir, tmp, args.settings)
        lat = s["latency_ms"]
        print(f"| live --realtime | {load:.2f} | {s['frames']} | {s['frames_per_s']:.1f} in, {s['analyzed_per_s']:.1f} "
              f"analysed | {s['frames_dropped']} ({100 * s['dropped_share']:.1f} %) | {lat['p50']} / {lat['p95']} / "
              f"{lat['max']} |", flush=True)
        stages = s["seconds_per_stage"]
        analysed = max(s["frames_analyzed"], 1)
        busy = s["busy_ms_per_frame"]
        print("live, ms per analysed frame: " + ", ".join(f"{k} {1000 * v / analysed:.1f}" for k, v in stages.items())
              + f"; busy: stage 1 {busy['stage1']:.1f}, stage 2 {busy['stage2']:.1f} (a frame every 40 ms at 25 "
              f"frames/s); detector calls {s['detector_calls']}")
        split = s["encoder_split"]
        print(f"encoder split ({split['setting']}): blocks in stage 1 of {split['depth']}, frames per k "
              f"{split['k_frames']}, mean k {split['k_mean']}; one block on one face {split['block_ms']} ms")
    print(f"after: {loads()}")


if __name__ == "__main__":
    main()
