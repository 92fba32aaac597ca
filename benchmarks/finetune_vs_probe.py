"""Does expression fine-tuning help? Validation EXPR macro F1 of (a) the fine-tuned encoder, (b) a linear
probe on the un-finetuned MAE encoder, (c) chance, all on the same synthetic Aff-Wild2 data.

    .venv/bin/python benchmarks/finetune_vs_probe.py --work /tmp/ft_vs_probe [--videos 40 --frames 60]

With few videos (few identities) a frame encoder learns who, not which expression, and validation F1
stays at chance; 40 short videos give 24 training identities.

Steps: ``affectmae synth`` -> ``pretrain`` (pretrain_tiny) -> ``finetune`` (finetune_tiny) and the probe
(``freeze_encoder=true``; the probe gets the best of two learning rates, so it is not handicapped by a
learning rate chosen for fine-tuning). Chance: the better of a constant majority-class prediction and
the mean of 20 uniformly random predictions. Prints one JSON line per result.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np
import torch

from affectmae.datasets.affwild2 import AffWild2Frames
from affectmae.evaluation.metrics import expr_metrics
from affectmae.synth.dataset import generate_affwild2
from affectmae.training.finetune import run_finetune
from affectmae.training.pretrain import run_pretrain


def chance_f1(data: Path) -> dict:
    frames = AffWild2Frames(data, data, "expr", "val")
    labels = np.array([int(frames.label(i)) for i in range(len(frames))])
    majority = np.bincount(labels, minlength=8).argmax()
    rng = np.random.default_rng(0)
    uniform = np.mean([expr_metrics(rng.integers(0, 8, len(labels)), labels)["score"] for _ in range(20)])
    return {"majority": expr_metrics(np.full(len(labels), majority), labels)["score"], "uniform": float(uniform),
            "val_frames": len(labels)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--videos", type=int, default=40, help="many short videos: many identities")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--pretrain-epochs", type=int, default=8)
    parser.add_argument("--finetune-epochs", type=int, default=12)
    parser.add_argument("--probe-lrs", default="1e-3,1e-2")
    parser.add_argument("--frame-stride", type=int, default=2)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="extra finetune settings for both runs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps({"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                      "threads": torch.get_num_threads()}))

    data = args.work / "aw2"
    if not (data / "synth_info.json").is_file():
        generate_affwild2(data, videos=args.videos, frames=args.frames, faces=300)
    t0 = time.perf_counter()
    mae = args.work / "pretrain"
    if not (mae / "encoder.safetensors").is_file():
        run_pretrain("pretrain_tiny", [f"epochs={args.pretrain_epochs}", "tensorboard=false"],
                     images=[str(data / "faces")], out=str(mae))
    losses = [json.loads(ln) for ln in (mae / "metrics.jsonl").read_text().splitlines()]
    epoch_losses = [round(r["loss"], 4) for r in losses if r["kind"] == "epoch"]
    print(json.dumps({"result": "pretrain", "epoch_losses": epoch_losses, "seconds": round(time.perf_counter() - t0, 1)}))

    common = [f"epochs={args.finetune_epochs}", "max_steps=0", "head_only_steps=0", f"frame_stride={args.frame_stride}",
              "tensorboard=false", *args.overrides]
    results = {}
    for name, extra in [("finetuned", [])] + [(f"probe_lr{lr}", ["freeze_encoder=true", f"lr={lr}"])
                                             for lr in args.probe_lrs.split(",")]:
        t0 = time.perf_counter()
        run = run_finetune("finetune_tiny", common + extra, annotations=str(data), encoder=str(mae), out=str(args.work / name),
                           resume=(args.work / name / "last_state.safetensors").is_file() or None)
        best = json.loads((run / "best.json").read_text())
        results[name] = best["score"]
        print(json.dumps({"result": name, "val_expr_f1": round(best["score"], 4), "best_epoch": best["epoch"],
                          "seconds": round(time.perf_counter() - t0, 1)}))
    probe = max(v for k, v in results.items() if k.startswith("probe"))
    chance = chance_f1(data)
    print(json.dumps({"result": "summary", "finetuned": round(results["finetuned"], 4), "linear_probe": round(probe, 4),
                      "chance_majority": round(chance["majority"], 4), "chance_uniform": round(chance["uniform"], 4),
                      "val_frames": chance["val_frames"],
                      "finetuned_beats_both": results["finetuned"] > max(probe, chance["majority"], chance["uniform"])}))


if __name__ == "__main__":
    main()
