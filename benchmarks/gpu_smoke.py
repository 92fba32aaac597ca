"""GPU smoke test: every stage of the pipeline for a few steps on ``cuda`` with bf16 autocast, in a few minutes.

    python benchmarks/gpu_smoke.py                      # on a GPU machine (default --device cuda)
    python benchmarks/gpu_smoke.py --device cpu         # the same stages on CPU (fp32, gloo instead of NCCL)

Stages, each on tiny synthetic data the package generates (no network, no weights):

1. ``env``: torch/CUDA versions, device name, bf16 support (``--device cuda`` without CUDA fails here);
2. ``synth``: :func:`affectmae.synth.dataset.generate_affwild2` (videos, frames, face images);
3. ``pretrain``: MAE (``pretrain_tiny``) for ``--epochs`` epochs, ``device=`` and ``bf16=`` set;
4. ``finetune``: EXPR fine-tuning of that encoder (``finetune_tiny``), ``device=``, ``bf16=``;
5. ``ddp``: a one-process DistributedDataParallel run under ``torchrun --nproc_per_node 1`` with the NCCL
   backend (gloo with ``--device cpu``): the fine-tuning model (encoder + EXPR head), bf16 autocast, an
   ``all_reduce`` checked for its value. (The library's stages treat a world of one process as
   non-distributed, so DDP itself is only exercised here.)
6. ``extract``: features of every frame with the fine-tuned encoder on the device;
7. ``train``: the temporal model (``temporal_tiny``, all three tasks) on the device; its config has no
   bf16 switch, so it runs fp32;
8. ``temporal_bf16``: the paper-size temporal model (768-d, w=300) forward + backward under bf16 autocast
   (cuda only; skipped on CPU, where bf16 is many times slower);
9. ``export`` + ``analyze``: a MODEL_DIR, then ``analyze --device`` on a generated MP4 with faces;
10. ``input``: the GPU input paths (cuda only): nvJPEG batch decoding of the frames and the batched
    augmentation on the device, their images/s and their largest difference to the CPU path.

Each stage prints one ``STAGE <name>: PASS|FAIL|SKIP`` line with its throughput (images/s, frames/s or
segments/s); the last line is ``SMOKE: PASS ...`` or ``SMOKE: FAIL ...``, and the exit status is 1 on any
failure. A stage whose input stage failed is a failure too.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# imported by the stages besides torch/timm/torchvision; a machine without network may lack some (the stages
# that need one then fail with its ImportError, the others still run)
NEEDED_MODULES = ("numpy", "pandas", "PIL", "safetensors", "yaml", "tqdm", "av", "cv2", "einops", "matplotlib", "scipy")


@dataclass
class StageResult:
    name: str
    status: str  # PASS | FAIL | SKIP
    seconds: float
    throughput: str = ""
    note: str = ""

    def line(self) -> str:
        parts = [f"STAGE {self.name}: {self.status}", f"{self.seconds:.1f} s"]
        parts += [p for p in (self.throughput, self.note) if p]
        return " | ".join(parts)


@dataclass
class Smoke:
    """Runs stages in order, records their results and prints one line per stage."""

    results: list[StageResult] = field(default_factory=list)
    outputs: dict = field(default_factory=dict)

    def run(self, name: str, fn, needs: tuple[str, ...] = (), skip: str = "") -> None:
        failed = [n for n in needs if self.status(n) != "PASS"]
        t0 = time.perf_counter()
        if skip:
            result = StageResult(name, "SKIP", 0.0, note=skip)
        elif failed:
            result = StageResult(name, "FAIL", 0.0, note=f"not run: needs {', '.join(failed)}")
        else:
            try:
                throughput, note = fn()
                result = StageResult(name, "PASS", time.perf_counter() - t0, throughput, note)
            except Exception as exc:  # a smoke test reports every failure and goes on
                traceback.print_exc()
                result = StageResult(name, "FAIL", time.perf_counter() - t0, note=f"{type(exc).__name__}: {exc}")
        self.results.append(result)
        print(result.line(), flush=True)

    def status(self, name: str) -> str:
        return next((r.status for r in self.results if r.name == name), "missing")

    def summary(self, seconds: float) -> str:
        failed = [r.name for r in self.results if r.status == "FAIL"]
        counts = {s: sum(r.status == s for r in self.results) for s in ("PASS", "FAIL", "SKIP")}
        head = "SMOKE: FAIL" if failed else "SMOKE: PASS"
        tail = f" (failed: {', '.join(failed)})" if failed else ""
        return (f"{head} {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped in {seconds:.1f} s"
                f"{tail}")


def _metrics(run_dir: Path, kind: str) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("kind") == kind]


def stage_env(args) -> tuple[str, str]:
    import torch

    from affectmae.device import bf16_supported, select_device

    device = select_device(args.device)  # AffectMAEError when cuda is asked for and missing
    info = f"python {platform.python_version()}, torch {torch.__version__}"
    missing = [m for m in NEEDED_MODULES if importlib.util.find_spec(m) is None]
    if importlib.util.find_spec("yuface") is None and importlib.util.find_spec("mtcnn") is None:
        missing.append("yuface or mtcnn (face detector for analyze)")
    info += f", missing modules: {', '.join(missing)}" if missing else ", all dependencies importable"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        info += f", CUDA {torch.version.cuda}, {name}, bf16 {'yes' if bf16_supported(device) else 'NO'}"
        info += f", NCCL {'yes' if torch.distributed.is_nccl_available() else 'NO'}"
        if not bf16_supported(device):
            raise RuntimeError(f"{name} has no bf16 support: {info}")
    return "", info


def stage_synth(args, out: Path) -> tuple[str, str]:
    from affectmae.synth.dataset import generate_affwild2

    t0 = time.perf_counter()
    summary = generate_affwild2(out / "data", videos=args.videos, frames=args.frames, faces=args.faces, seed=0,
                                overwrite=True)
    frames = sum(1 for _ in (out / "data" / "cropped_aligned").rglob("*.jpg"))
    seconds = time.perf_counter() - t0
    return (f"{frames / seconds:.1f} frames/s written",
            f"{frames} frame JPEGs, {args.faces} face images ({summary.seconds:.1f} s)")


def _common(args) -> list[str]:
    return [f"device={args.device}", f"bf16={'true' if args.device == 'cuda' else 'false'}", "num_workers=0",
            "tensorboard=false", f"batch_size={args.batch}", f"epochs={args.epochs}", "warmup_epochs=1"]


def stage_pretrain(args, out: Path, smoke: Smoke) -> tuple[str, str]:
    from affectmae.training.pretrain import run_pretrain

    run = Path(run_pretrain("pretrain_tiny", _common(args) + ["recon_every_epochs=1000"],
                            images=[str(out / "data" / "faces")], out=str(out / "pretrain")))
    epochs = _metrics(run, "epoch")
    if len(epochs) != args.epochs:
        raise RuntimeError(f"{len(epochs)} epoch records in {run / 'metrics.jsonl'}, expected {args.epochs}")
    smoke.outputs["pretrain"] = run
    return (f"{epochs[-1]['images_per_s']:.1f} images/s (last epoch)",
            f"loss {epochs[0]['loss']:.4f} -> {epochs[-1]['loss']:.4f}")


def stage_finetune(args, out: Path, smoke: Smoke) -> tuple[str, str]:
    from affectmae.training.finetune import run_finetune

    run = Path(run_finetune("finetune_tiny", _common(args) + ["max_steps=0", "head_only_steps=0"],
                            annotations=str(out / "data"), encoder=str(smoke.outputs["pretrain"]),
                            out=str(out / "finetune")))
    epochs = _metrics(run, "epoch")
    steps = _metrics(run, "train")
    if len(epochs) != args.epochs or not steps:
        raise RuntimeError(f"{len(epochs)} epoch and {len(steps)} step records in {run / 'metrics.jsonl'}")
    images = len(steps) * args.batch  # one record per optimizer step (log_every_steps=1 in finetune_tiny)
    seconds = sum(r["seconds"] for r in epochs)
    smoke.outputs["encoder"] = run / "encoder.safetensors"
    return (f"{images / seconds:.1f} images/s (train steps + validation)",
            f"{len(steps)} steps, val EXPR F1 {epochs[-1]['val_score']:.3f}")


def stage_ddp(args, out: Path) -> tuple[str, str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", __file__,
           "--ddp-worker", "--device", args.device, "--batch", str(args.batch), "--ddp-steps", str(args.ddp_steps)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    report = [ln for ln in proc.stdout.splitlines() if ln.startswith("DDP_RESULT ")]
    if proc.returncode != 0 or not report:
        raise RuntimeError(f"torchrun exited {proc.returncode}: {(proc.stderr or proc.stdout)[-2000:]}")
    result = json.loads(report[-1][len("DDP_RESULT "):])
    return (f"{result['images_per_s']:.1f} images/s",
            f"backend {result['backend']}, world {result['world_size']}, bf16 {result['bf16']}, "
            f"all_reduce {result['all_reduce']}, loss {result['first_loss']:.4f} -> {result['last_loss']:.4f}")


def ddp_worker(args) -> None:
    """Inside torchrun: DDP over the fine-tuning model (encoder + EXPR head) for a few steps."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from affectmae.device import autocast
    from affectmae.models.vit import build_encoder
    from affectmae.tasks import get_task
    from affectmae.training.finetune import FinetuneModel

    cuda = args.device == "cuda"
    backend = "nccl" if cuda else "gloo"
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = FinetuneModel(build_encoder("tiny", img_size=112, depth=4), get_task("expr")).to(device)
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(args.batch, 3, 112, 112, generator=g).to(device)
        y = torch.randint(0, 8, (args.batch,), generator=g).to(device)
        losses = []

        def step() -> None:
            with autocast(device, cuda):
                logits = net(x)
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())

        step()  # warm-up: kernels, DDP buckets
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.ddp_steps):
            step()
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        check = torch.full((4,), float(rank + 1), device=device)
        dist.all_reduce(check)
        expected = float(world * (world + 1) / 2)
        if not torch.allclose(check.cpu(), torch.full((4,), expected)):
            raise RuntimeError(f"all_reduce gave {check.tolist()}, expected {expected}")
        if not all(map(lambda v: v == v and abs(v) < 1e6, losses)):
            raise RuntimeError(f"non-finite losses {losses}")
        if rank == 0:
            print("DDP_RESULT " + json.dumps({
                "backend": dist.get_backend(), "world_size": world, "bf16": cuda,
                "images_per_s": args.batch * world * args.ddp_steps / seconds,
                "all_reduce": f"ok ({expected:g})", "first_loss": losses[0], "last_loss": losses[-1],
            }), flush=True)
    finally:
        dist.destroy_process_group()


def stage_extract(args, out: Path, smoke: Smoke) -> tuple[str, str]:
    from affectmae.features.extract import ExtractConfig, extract_features

    summary = extract_features(ExtractConfig(
        encoder=str(smoke.outputs["encoder"]), frames=str(out / "data" / "cropped_aligned"), out=str(out / "features"),
        annotations=str(out / "data" / "annotations"), device=args.device, batch_size=args.batch))
    smoke.outputs["features"] = out / "features"
    return f"{summary['frames_per_s']:.1f} frames/s", f"{summary['frames']} frames, {summary.get('videos', '?')} videos"


def stage_train(args, out: Path, smoke: Smoke) -> tuple[str, str]:
    from affectmae.config import build_config
    from affectmae.training.temporal import TrainConfig, train_temporal

    cfg = build_config(TrainConfig, "temporal_tiny", [
        f"features={out / 'features'}", f"annotations={out / 'data' / 'annotations'}", f"out={out / 'train'}", "task=multi",
        f"device={args.device}", f"epochs={args.epochs}"])
    result = train_temporal(cfg)
    smoke.outputs["run"] = Path(result["run_dir"])
    best = result["best"]
    scores = ", ".join(f"{t} {best[t]['score']:.3f}" for t in ("va", "expr", "au") if t in best)
    rate = result.get("train_segments_per_s")
    if rate is None:
        raise RuntimeError(f"train_temporal returned no train_segments_per_s: {sorted(result)}")
    return f"{rate:.1f} segments/s (w={cfg.window}, fp32)", f"val {scores}"


def stage_temporal_bf16(args) -> tuple[str, str]:
    import torch

    from affectmae.models.temporal import TemporalConfig, TemporalModel
    from affectmae.training.losses import multitask_loss

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = TemporalModel(TemporalConfig(input_dim=768, tasks=["va", "expr", "au"])).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-5)
    batch, window = 32, 300
    x = torch.randn(batch, window, 768, device=device)
    unpadded = torch.ones(batch, window, dtype=torch.bool, device=device)
    unpadded[-1, 200:] = False  # a padded last window
    targets = {"va": torch.rand(batch, window, 2, device=device) * 2 - 1,
               "expr": torch.randint(0, 8, (batch, window, 1), device=device).float(),
               "au": torch.randint(0, 2, (batch, window, 12), device=device).float()}
    masks = {t: unpadded for t in targets}

    def step() -> float:
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            outputs = model(x, None, unpadded)
        loss, _ = multitask_loss({k: v.float() for k, v in outputs.items()}, targets, masks)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    first = step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.ddp_steps):
        last = step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if not (first == first and last == last):
        raise RuntimeError(f"non-finite loss: {first} -> {last}")
    return (f"{batch * args.ddp_steps / seconds:.1f} segments/s (w=300, batch 32, train step)",
            f"loss {first:.4f} -> {last:.4f}")


def stage_input(args, out: Path) -> tuple[str, str]:
    """The GPU input paths: nvJPEG batches of the synthetic frames (against the CPU decoder's pixels) and the
    batched augmentation (FaceAugment.apply_batch) on the device against the CPU path."""
    import numpy as np
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    from affectmae.datasets.decode import decode_rgb
    from affectmae.models.augment import FaceAugment, as_uint8_chw

    paths = sorted((out / "data" / "cropped_aligned").rglob("*.jpg"))[:256]
    data = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths]
    decode_jpeg(data[:8], mode=ImageReadMode.RGB, device="cuda")  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    gpu = decode_jpeg(data, mode=ImageReadMode.RGB, device="cuda")
    torch.cuda.synchronize()
    decode_rate = len(paths) / (time.perf_counter() - t0)
    diff = max(int((g.permute(1, 2, 0).cpu().int() - torch.from_numpy(decode_rgb(p).astype(np.int32))).abs().max())
               for g, p in zip(gpu, paths, strict=True))
    aug = FaceAugment(112, 0.2, True)
    images = [as_uint8_chw(decode_rgb(p)) for p in paths]
    torch.manual_seed(0)
    params = torch.stack([aug.sample(int(x.shape[1]), int(x.shape[2])) for x in images])
    on_gpu = [x.cuda() for x in images]
    aug.apply_batch(on_gpu[:8], params[:8].cuda())
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    batch = aug.apply_batch(on_gpu, params.cuda())
    torch.cuda.synchronize()
    aug_rate = len(paths) / (time.perf_counter() - t0)
    aug_diff = float((batch.cpu() - aug.apply_batch(images, params)).abs().max())
    if diff > 8 or aug_diff > 0.05:
        raise RuntimeError(f"GPU input differs from the CPU path: nvJPEG {diff} levels, augmentation {aug_diff:.4f}")
    return (f"nvJPEG {decode_rate:,.0f} images/s, device augmentation {aug_rate:,.0f} images/s",
            f"{len(paths)} frames; max difference to the CPU path: decode {diff} levels, augmentation {aug_diff:.2e}")


def stage_export_analyze(args, out: Path, smoke: Smoke) -> tuple[str, str]:
    from affectmae.inference.model import export_model_dir
    from affectmae.inference.pipeline import analyze_video
    from affectmae.synth.cartoon import ALIGN_MARGIN
    from affectmae.synth.video import make_synthetic_video

    model_dir = out / "model"
    export_model_dir(smoke.outputs["encoder"], [smoke.outputs["run"]], model_dir, align_margin=ALIGN_MARGIN)
    video = make_synthetic_video(out / "video.mp4", args.video_frames, n_faces=1, seed=0)
    t0 = time.perf_counter()
    table = analyze_video(video.path, model_dir, out_dir=out / "analyze", device=args.device, plots=False)
    seconds = time.perf_counter() - t0
    summary = table.attrs["summary"]
    if len(table) == 0 or summary["faces"] < 1:
        raise RuntimeError(f"analyze found no face in {video.path} ({summary})")
    if not str(summary["device"]).startswith(args.device):
        raise RuntimeError(f"analyze ran on {summary['device']}, not {args.device}")
    return (f"{summary['frames_analyzed'] / summary['seconds_total']:.1f} frames/s "
            f"({video.n_frames / seconds:.1f} with model load)",
            f"{len(table)} face rows over {video.n_frames} frames, detector {summary['detector']}, "
            f"device {summary['device']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--out", default=None, help="work folder (default: a temporary folder, removed at the end)")
    parser.add_argument("--videos", type=int, default=None, help="synthetic videos (cuda 6, cpu 3)")
    parser.add_argument("--frames", type=int, default=None, help="mean frames per video (cuda 120, cpu 40)")
    parser.add_argument("--faces", type=int, default=None, help="face images for pretraining (cuda 256, cpu 48)")
    parser.add_argument("--batch", type=int, default=None, help="batch size of every stage (cuda 64, cpu 16)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of pretrain, finetune and train")
    parser.add_argument("--ddp-steps", type=int, default=None,
                        help="timed steps of ddp and temporal_bf16 (cuda 20, cpu 2)")
    parser.add_argument("--video-frames", type=int, default=None, help="frames of the analyzed MP4 (cuda 100, cpu 30)")
    parser.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    for name, on_cuda, on_cpu in (("videos", 6, 3), ("frames", 120, 40), ("faces", 256, 48), ("batch", 64, 16),
                                  ("ddp_steps", 20, 2), ("video_frames", 100, 30)):
        if getattr(args, name) is None:
            setattr(args, name, on_cuda if cuda else on_cpu)
    try:
        import affectmae  # noqa: F401
    except ImportError:  # a copied repository that is not pip-installed
        sys.path.insert(0, str(REPO / "src"))
    if args.ddp_worker:
        ddp_worker(args)
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="affectmae_smoke_") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        print(f"gpu_smoke: device {args.device}, work folder {out}", flush=True)
        smoke = Smoke()
        smoke.run("env", lambda: stage_env(args))
        smoke.run("synth", lambda: stage_synth(args, out), needs=("env",))
        smoke.run("pretrain", lambda: stage_pretrain(args, out, smoke), needs=("synth",))
        smoke.run("finetune", lambda: stage_finetune(args, out, smoke), needs=("pretrain",))
        smoke.run("ddp", lambda: stage_ddp(args, out), needs=("env",))
        smoke.run("extract", lambda: stage_extract(args, out, smoke), needs=("finetune",))
        smoke.run("train", lambda: stage_train(args, out, smoke), needs=("extract",))
        smoke.run("temporal_bf16", lambda: stage_temporal_bf16(args), needs=("env",),
                  skip="" if cuda else "cpu: bf16 is many times slower than fp32 here")
        smoke.run("analyze", lambda: stage_export_analyze(args, out, smoke), needs=("finetune", "train"))
        smoke.run("input", lambda: stage_input(args, out), needs=("synth",),
                  skip="" if cuda else "cpu: nvJPEG and the device augmentation need CUDA (bench_input.py on CPU)")
        line = smoke.summary(time.perf_counter() - started)
    print(line, flush=True)
    return 1 if line.startswith("SMOKE: FAIL") else 0


if __name__ == "__main__":
    sys.exit(main())
