"""What a GPU consumes and what one CPU core supplies: FLOPs per image, images/s per core, cores per GPU.

    OMP_NUM_THREADS=1 python benchmarks/bench_input.py            # about 1-2 minutes
    python benchmarks/bench_input.py --rounds 5 --images 64        # steadier figures

Need: the model's FLOPs per image counted by ``torch.utils.flop_counter.FlopCounterMode`` at the paper configs
(ViT-B/16 at 112 px; pretraining: 25 % visible patches + the 8x512 decoder, forward and backward; fine-tuning:
encoder + head, forward and backward; extraction: encoder forward), and the images/s an H100 would consume at
``--mfu`` (40 %) of its dense bf16 peak (``--peak-tflops``, 989 for the SXM part).

Supply: images/s of each input pipeline on one core (``torch.set_num_threads(1)``), timed in interleaved rounds
(every pipeline once per round, the best round kept), on 500x500 face JPEGs at quality 95 and on 112x112 frames
like Aff-Wild2's. The 500x500 images are real photographs (``--faces DIR``, else the packaged and fetched face
photos of ``synth/photos.py``: ``affectmae fetch-media``), centre-cropped square and resized; generated faces
only when none are found (a printed note says so). The reference MAE recipe's pipeline (torchvision
``ImageFolder`` + PIL + ``RandomResizedCrop(interpolation=3)`` + ``ToTensor`` + ``Normalize``) runs in the same
rounds. Cores per GPU = need / supply. Meaning: the mean and largest absolute difference (normalised units) of
each reduced pretraining decode against the full decode, for the same seeds, and of the default uint8 resize of
the crop against the float resize it replaced. Resizers: the crop's resize alone (torch uint8, float, PIL,
OpenCV) on the crop-aware decode's pixels, time and mean |diff| from PIL's bicubic (the reference's resize).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def machine() -> str:
    model, flags = platform.processor() or "?", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                flags = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in have)
                break
    except OSError:
        pass
    import simplejpeg
    return (f"{model} ({flags}), {torch.get_num_threads()} torch thread(s), torch {torch.__version__}, Pillow "
            f"{Image.__version__}, simplejpeg {simplejpeg.__version__}")


def flops_per_image(batch: int = 2) -> dict[str, float]:
    from torch.utils.flop_counter import FlopCounterMode

    from affectmae.models.mae import MaskedAutoencoder
    from affectmae.models.vit import build_encoder
    from affectmae.tasks import get_task
    from affectmae.training.finetune import FinetuneModel

    torch.manual_seed(0)
    x = torch.randn(batch, 3, 112, 112)
    out = {}
    mae = MaskedAutoencoder(build_encoder("base", 112), 512, 8, 16, True)
    with FlopCounterMode(display=False) as fc:
        loss, _, _ = mae(x, 0.75, torch.rand(batch, mae.encoder.num_patches))
        loss.backward()
    out["pretrain"] = fc.get_total_flops() / batch
    ft = FinetuneModel(build_encoder("base", 112), get_task("expr"))
    with FlopCounterMode(display=False) as fc:
        ft(x).sum().backward()
    out["finetune"] = fc.get_total_flops() / batch
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        ft.encoder.forward_features(x)
    out["extract"] = fc.get_total_flops() / batch
    return out


NOT_FACES = ("mountain", "mask_", "alpha")  # packaged pictures that are not face photographs


def face_photos(faces: Path | None) -> list[Path]:
    """Real face photographs: ``faces`` (a folder), else the packaged and fetched ones."""
    if faces is not None:
        return sorted(p for p in faces.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    from affectmae.synth.photos import find_face_photos

    return [p for p in find_face_photos() if not any(s in p.name for s in NOT_FACES)]


def make_images(root: Path, n: int, faces: Path | None) -> tuple[Path, Path, str]:
    """``root/faces/x/*.jpg`` (500x500 q95, an ImageFolder), ``root/frames/v/%05d.jpg`` (112x112), what they are."""
    face_dir, frame_dir = root / "faces" / "x", root / "frames" / "v"
    face_dir.mkdir(parents=True)
    frame_dir.mkdir(parents=True)
    photos = face_photos(faces)
    rng = np.random.default_rng(0)
    for i in range(n):
        if photos:
            img = Image.open(photos[i % len(photos)]).convert("RGB")
            w, h = img.size
            side = min(w, h)
            box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
            img = img.resize((500, 500), Image.BICUBIC, box=box)
        else:
            from affectmae.synth.cartoon import render_face, sample_identity

            img = Image.fromarray(render_face(rng.uniform(-1, 1, 14), rng, 500, identity=sample_identity(rng), noise=2.0))
        img.save(face_dir / f"{i:05d}.jpg", quality=95)
        img.resize((112, 112), Image.BICUBIC).save(frame_dir / f"{i + 1:05d}.jpg", quality=95)
    what = (f"{min(n, len(photos))} real face photographs" if photos else
            "generated cartoon faces (note: no real photographs found; run affectmae fetch-media)")
    return root / "faces", root / "frames", what


def _float_resize():
    """FaceAugment with the crop resized on the float image (the default before the uint8 resize)."""
    from torchvision.transforms.v2 import functional as TF

    from affectmae.models.augment import FaceAugment

    class FloatResize(FaceAugment):
        def _crop(self, image, params):
            top, left, h, w = (int(v) for v in params[:4])
            return TF.resized_crop(TF.to_dtype(image, torch.float32, scale=True), top, left, h, w,
                                   [self.img_size] * 2, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    return FloatResize


def resizers(faces: Path, n: int, rounds: int) -> dict[str, tuple[float, float]]:
    """(ms per crop, mean |diff| from PIL's bicubic in normalised units) of each resize of the decoded crop."""
    import cv2

    from affectmae.datasets.face_images import build_face_dataset
    from affectmae.models.augment import FaceAugment, as_uint8_chw

    cv2.setNumThreads(1)
    aug, float_aug = FaceAugment(112, 0.2, True), _float_resize()(112, 0.2, True)
    whole, crops = build_face_dataset([f"folder:{faces}"]), []
    for i in range(n):
        torch.manual_seed(i)
        pixels, params = whole.read_cropped(i, aug.sample, 112)[0]
        crops.append((pixels, params, (slice(params[0], params[0] + params[2]), slice(params[1], params[1] + params[3]))))
    fns = {"torch uint8 (default)": lambda px, p, box: aug._crop(as_uint8_chw(px), p),
           "torch float (previous)": lambda px, p, box: float_aug._crop(as_uint8_chw(px), p) * 255,
           "PIL crop + BICUBIC": lambda px, p, box: Image.fromarray(px[box]).resize((112, 112), Image.BICUBIC),
           "cv2 INTER_CUBIC": lambda px, p, box: cv2.resize(px[box], (112, 112), interpolation=cv2.INTER_CUBIC),
           "cv2 INTER_AREA": lambda px, p, box: cv2.resize(px[box], (112, 112), interpolation=cv2.INTER_AREA)}

    def hwc(x) -> torch.Tensor:
        x = torch.tensor(np.asarray(x)).float()
        return x.permute(1, 2, 0) if x.shape[0] == 3 else x

    pil = [hwc(fns["PIL crop + BICUBIC"](*c)) for c in crops]
    out = {}
    for name, fn in fns.items():
        best = min(_timed(fn, crops) for _ in range(rounds)) / n
        diff = torch.stack([(hwc(fn(*c)) - r).abs() for c, r in zip(crops, pil, strict=True)]).mean().item()
        out[name] = (best * 1e3, diff / 255 / 0.226)
    return out


def _timed(fn, items) -> float:
    t0 = time.perf_counter()
    for item in items:
        fn(*item)
    return time.perf_counter() - t0


def meaning(faces: Path, n: int) -> dict[str, tuple[float, float]]:
    """(mean, max) |reduced - full decode| of the pretraining tensors, same seeds, normalised units."""
    from affectmae.datasets.face_images import build_face_dataset
    from affectmae.models.augment import FaceAugment
    from affectmae.training.pretrain_data import MAEAugmented

    aug = FaceAugment(112, 0.2, True)
    full = MAEAugmented(build_face_dataset([f"folder:{faces}"]), aug, 49, seed=0)
    jpegs = build_face_dataset([f"folder:{faces}"])
    runs = {"decoded at the crop's scale (default) vs the full decode": MAEAugmented(jpegs, aug, 49, 0, crop_decode=True),
            "decoded at >= 224 px (decode_min_side=224) vs the full decode": MAEAugmented(
                build_face_dataset([f"folder:{faces}"], min_side=224), aug, 49, seed=0)}
    previous = MAEAugmented(jpegs, _float_resize()(112, 0.2, True), 49, 0, crop_decode=True)
    out = {}
    for name, data in runs.items():
        diffs = torch.cat([(full[i][0] - data[i][0]).abs().flatten() for i in range(n)])
        out[name] = (diffs.mean().item(), diffs.max().item())
    default = next(iter(runs.values()))
    diffs = torch.cat([(default[i][0] - previous[i][0]).abs().flatten() for i in range(n)])
    out["uint8 resize (default) vs the float resize, crop's scale, same pixels"] = (diffs.mean().item(),
                                                                                    diffs.max().item())
    return out


def pipelines(faces: Path, frames: Path, pack_faces: Path, pack_frames: Path, n: int) -> dict[str, callable]:
    from torchvision import datasets
    from torchvision import transforms as T

    from affectmae.datasets.affwild2 import FrameIndex
    from affectmae.datasets.decode import decode_rgb
    from affectmae.datasets.face_images import build_face_dataset
    from affectmae.datasets.images import load_rgb, open_rgb
    from affectmae.datasets.pack import Pack
    from affectmae.models.augment import FaceAugment, as_uint8_chw
    from affectmae.models.preprocess import resize_frame

    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    reference = datasets.ImageFolder(str(faces), transform=T.Compose([
        T.RandomResizedCrop(112, scale=(0.2, 1.0), interpolation=3), T.RandomHorizontalFlip(), T.ToTensor(),
        T.Normalize(mean, std)]))
    previous = build_face_dataset([f"folder:{faces}"], transform=_float_resize()(112, 0.2, True))
    ours = build_face_dataset([f"folder:{faces}"], transform=FaceAugment(112, 0.2, True), min_side=224)
    whole = build_face_dataset([f"folder:{faces}"])
    packed = build_face_dataset([f"folder:{faces}"], transform=FaceAugment(112, 0.2, True), min_side=224,
                                pack=pack_faces)
    aug, ft_aug, ft_today = FaceAugment(112, 0.2, True), FaceAugment(112, 0.8, True), _float_resize()(112, 0.8, True)
    float_aug = _float_resize()(112, 0.2, True)
    index, fpack = FrameIndex(frames), Pack(pack_frames)
    paths = [index.frame_path("v", k) for k in range(n)]

    def loop(fn):
        return lambda: [fn(i) for i in range(n)]

    def packed_device(i):  # what a worker does with device_augment: read the pixels and draw the crop
        x = as_uint8_chw(packed.sources[0].pack.pixels(i))
        return x, aug.sample(int(x.shape[1]), int(x.shape[2]))

    def frame_device(i):
        x = as_uint8_chw(fpack.pixels(i))
        return x, ft_aug.sample(int(x.shape[1]), int(x.shape[2]))

    return {
        "pretrain: reference MAE (ImageFolder + PIL)": loop(lambda i: reference[i]),
        "pretrain: full decode, float resize (earlier default)": loop(lambda i: previous[i]),
        "pretrain: JPEG at the crop's scale, float resize (previous default)": loop(lambda i: float_aug.apply(
            *whole.read_cropped(i, float_aug.sample, 112)[0])),
        "pretrain: JPEG at the crop's scale, uint8 resize (default)": loop(lambda i: aug.apply(*whole.read_cropped(
            i, aug.sample, 112)[0])),
        "pretrain: JPEG, decoded at >= 224 px (decode_min_side=224)": loop(lambda i: ours[i]),
        "pretrain: packed, augmentation on the CPU": loop(lambda i: packed[i]),
        "pretrain: packed, device_augment (CPU part)": loop(packed_device),
        "finetune: previous default (112-px JPEG, float resize)": loop(lambda i: ft_today(open_rgb(paths[i]))),
        "finetune: JPEG (simplejpeg), FaceAugment": loop(lambda i: ft_aug(decode_rgb(paths[i], 112))),
        "finetune: packed, device_augment (CPU part)": loop(frame_device),
        "extract: today (112-px JPEG, load_rgb)": loop(lambda i: resize_frame(load_rgb(paths[i]), 112)),
        "extract: JPEG (simplejpeg)": loop(lambda i: resize_frame(decode_rgb(paths[i], 0), 112)),
        "extract: packed": loop(lambda i: resize_frame(np.array(fpack.pixels(i)), 112)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48, help="images per pipeline and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--faces", type=Path, default=None, help="face JPEGs to use instead of generated ones")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    parser.add_argument("--mfu", type=float, default=0.4)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import logging
    logging.basicConfig(level=logging.WARNING)
    from affectmae.datasets.pack import pack_faces, pack_frames

    print(f"machine: {machine()}")
    flops = flops_per_image()
    need = {k: args.mfu * args.peak_tflops * 1e12 / v for k, v in flops.items()}
    for k, v in flops.items():
        print(f"need {k}: {v / 1e9:.2f} GFLOP/image -> {need[k]:,.0f} images/s per H100 at {args.mfu:.0%} of "
              f"{args.peak_tflops:g} TFLOP/s")
    work = Path(tempfile.mkdtemp(prefix="bench_input_"))
    try:
        faces, frames, what = make_images(work, args.images, args.faces)
        print(f"images: {what}, 500x500 JPEG q95 (and 112x112 frames)")
        pack_faces([f"folder:{faces}"], work / "pack_faces", min_side=224)
        pack_frames(frames, work / "pack_frames")
        runs = pipelines(faces, frames, work / "pack_faces", work / "pack_frames", args.images)
        best = dict.fromkeys(runs, float("inf"))
        for _ in range(args.rounds):
            for name, fn in runs.items():
                t0 = time.perf_counter()
                fn()
                best[name] = min(best[name], (time.perf_counter() - t0) / args.images)
        ref = {"pretrain": best["pretrain: reference MAE (ImageFolder + PIL)"],
               "finetune": best["finetune: previous default (112-px JPEG, float resize)"],
               "extract": best["extract: today (112-px JPEG, load_rgb)"]}
        print("| pipeline | ms/image | images/s per core | x baseline | cores per H100 |")
        print("| --- | --- | --- | --- | --- |")
        for name, sec in best.items():
            stage = name.split(":")[0]
            print(f"| {name} | {sec * 1e3:.2f} | {1 / sec:,.0f} | {ref[stage] / sec:.2f} | {need[stage] * sec:.1f} |")
        for name, (mean, top) in meaning(faces, args.images).items():
            print(f"pretrain tensors, {name}: mean |diff| {mean:.4f}, max {top:.3f}")
        for name, (ms, diff) in resizers(faces, args.images, args.rounds).items():
            print(f"resize of the crop, {name}: {ms:.3f} ms, mean |diff| from PIL's bicubic {diff:.4f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
