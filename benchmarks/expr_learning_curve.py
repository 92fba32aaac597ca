"""How many labelled frames does it take to read expression and action units off the realistic set's pixels?

    affectmae synth DATA --source photos --videos 160 --frames 150 --faces 0
    python benchmarks/expr_learning_curve.py DATA [--fractions 0.0625 0.25 1] [--steps 2000]

A small CNN (4 conv layers, 56x56 grey crops, standardised per frame; shift and flip augmentation), trained
from scratch with supervision on EXPR (class-weighted cross-entropy) and AU (BCE) at once, on a growing
share of the *training videos*; scored with the official metrics on three sets:

- ``fit``: training frames it was trained on (how well it can memorise);
- ``held-out videos``: every 4th training video, never trained on (the same people, other moments);
- ``unseen people``: the validation videos (people that appear in no training video).

This is not the project's model; it answers a narrower question: do these pixels carry the labels in a form
that a learner can pick up from this many frames, and how fast does that improve with more frames. Prints one
markdown row per fraction, the chance rows of the validation labels, and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from affectmae.datasets.affwild2 import FrameIndex
from affectmae.datasets.annotations import load_annotations
from affectmae.evaluation.metrics import evaluate
from affectmae.training.baselines import majority_chance, uniform_chance
from bench_pretrain import cpu_name

SIDE = 56


def load_frames(root: str, videos: list[str], stride: int,
                center: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grey 56x56 frames standardised per frame, EXPR labels (N,), AU labels (N, 12); frames valid for both.
    ``center``: subtract each video's mean frame (over its frames kept here), leaving what changes in the video."""
    index = FrameIndex(os.path.join(root, "cropped_aligned"))
    ann = os.path.join(root, "annotations")
    expr = {v.video: v for v in load_annotations(ann, "expr", "train") + load_annotations(ann, "expr", "val")}
    au = {v.video: v for v in load_annotations(ann, "au", "train") + load_annotations(ann, "au", "val")}
    xs, es, aus = [], [], []
    for name in videos:
        e, a = expr[name], au[name]
        n = min(e.n_frames, a.n_frames)
        keep = e.valid[:n] & a.valid[:n] & index.available(name, n)
        frames = []
        for k in np.flatnonzero(keep)[::stride]:
            img = Image.open(index.frame_path(name, k)).convert("L").resize((SIDE, SIDE), Image.BICUBIC)
            frames.append(np.asarray(img, np.float32) / 255.0)
            es.append(int(e.labels[k, 0]))
            aus.append(a.labels[k])
        if frames:
            v = np.stack(frames)
            v = (v - v.mean((1, 2), keepdims=True)) / (v.std((1, 2), keepdims=True) + 1e-3)
            xs.append(v - v.mean(0, keepdims=True) if center else v)
    x = torch.tensor(np.concatenate(xs))[:, None]
    return x, torch.tensor(es), torch.tensor(np.stack(aus), dtype=torch.float32)


def small_cnn() -> nn.Module:
    layers, width = [], 1
    for out in (32, 64, 96):
        layers += [nn.Conv2d(width, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        width = out
    return nn.Sequential(*layers, nn.Conv2d(width, 128, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Dropout(0.3), nn.Linear(128, 8 + 12))


def scores(net: nn.Module, x: torch.Tensor, e: torch.Tensor, a: torch.Tensor) -> tuple[float, float]:
    net.eval()
    with torch.no_grad():
        out = torch.cat([net(x[i:i + 512]) for i in range(0, len(x), 512)])
    net.train()
    expr = evaluate("expr", out[:, :8].argmax(1).numpy(), e.numpy()[:, None])["score"]
    au = evaluate("au", (out[:, 8:] > 0).float().numpy(), a.numpy())["score"]
    return expr, au


def train(x, e, a, steps: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = small_cnn()
    counts = torch.bincount(e, minlength=8).float()
    weight = counts.sum() / (8 * counts.clamp(min=1))
    pos = a.mean(0).clamp(0.02, 0.98)
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-3)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,))
        batch = torch.roll(x[idx], tuple(int(s) for s in torch.randint(-3, 4, (2,))), (2, 3))
        if torch.rand(1) < 0.5:
            batch = batch.flip(3)
        out = net(batch)
        loss = F.cross_entropy(out[:, :8], e[idx], weight=weight) + F.binary_cross_entropy_with_logits(
            out[:, 8:], a[idx], pos_weight=(1 - pos) / pos)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="a dataset written by `affectmae synth --source photos`")
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.0625, 0.25, 1.0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--center-video", action="store_true",
                        help="subtract each video's mean frame from its frames (training and scoring alike)")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    ann = os.path.join(args.data, "annotations")
    train_videos = sorted({v.video for v in load_annotations(ann, "expr", "train")}
                          & {v.video for v in load_annotations(ann, "au", "train")})
    val_videos = sorted({v.video for v in load_annotations(ann, "expr", "val")}
                        & {v.video for v in load_annotations(ann, "au", "val")})
    held, pool = train_videos[3::4], [v for i, v in enumerate(train_videos) if i % 4 != 3]
    held_set = load_frames(args.data, held, 2, args.center_video)
    val_set = load_frames(args.data, val_videos, 2, args.center_video)
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{len(pool)} training videos, {len(held)} held-out training videos, {len(val_videos)} validation videos"
          + (", each video's mean frame subtracted" if args.center_video else ""))
    with open(os.path.join(args.data, "synth_info.json")) as f:
        person = {v["name"]: v.get("person") for v in json.load(f)["videos"]}
    print("| training videos | training people | training frames | EXPR fit | EXPR held-out videos | "
          "EXPR unseen people | AU fit | AU held-out videos | AU unseen people | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for fraction in args.fractions:
        chosen = pool[: max(1, round(fraction * len(pool)))]
        x, e, a = load_frames(args.data, chosen, 1, args.center_video)
        start = time.perf_counter()
        net = train(x, e, a, args.steps, args.seed)
        fit = scores(net, x[:3000], e[:3000], a[:3000])
        held_s, val_s = scores(net, *held_set), scores(net, *val_set)
        print(f"| {len(chosen)} | {len({person[v] for v in chosen})} | {len(x)} | {fit[0]:.3f} | {held_s[0]:.3f} | "
              f"{val_s[0]:.3f} | {fit[1]:.3f} | {held_s[1]:.3f} | {val_s[1]:.3f} | {time.perf_counter() - start:.0f} |", flush=True)
    e_val, a_val = val_set[1].numpy()[:, None], val_set[2].numpy()
    ones = np.ones(len(e_val), bool)
    print(f"| chance: uniform | | | | | {uniform_chance('expr', e_val, ones)['expr_f1']:.3f} | | | "
          f"{uniform_chance('au', a_val, ones)['au_f1']:.3f} | |")
    print(f"| chance: majority class / all-ones AU | | | | | {majority_chance('expr', e_val, ones)['expr_f1']:.3f} | "
          f"| | {majority_chance('au', a_val, ones)['au_f1']:.3f} | |")


if __name__ == "__main__":
    main()
