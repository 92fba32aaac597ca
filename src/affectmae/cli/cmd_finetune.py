"""`affectmae finetune`: the pretrained encoder + a linear head on Aff-Wild2 frames (EXPR by default)."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune the encoder on Aff-Wild2 frames (expression by default)",
        description="Drops the MAE decoder, adds a linear head and trains on the frames with valid labels "
        "(AdamW lr 1e-4, batch 256 as in the paper). Keeps the epoch with the best validation score "
        "(EXPR macro F1) as encoder.safetensors. key=value overrides, e.g. epochs=3 layer_decay=0.75 "
        "class_weights=true freeze_encoder=true (linear probe).",
    )
    p.add_argument("--annotations", "--data", required=True,
                   help="Aff-Wild2 root (annotation folders + cropped_aligned/ below it)")
    p.add_argument("--encoder", required=True,
                   help="pretrain run folder, encoder.safetensors, reference-MAE .pth or timm state dict")
    p.add_argument("-o", "--out", required=True, help="run folder")
    p.add_argument("--task", default=None, choices=("expr", "au", "va"), help="labels to train on (default expr)")
    p.add_argument("--frames", default=None, help="cropped_aligned folder, if not under --annotations")
    p.add_argument("--config", default=None, help="YAML config file or packaged name (finetune_paper, finetune_tiny)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last_state.safetensors")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from affectmae.checkpoint import ENCODER_FILE
    from affectmae.training.finetune import run_finetune

    run_dir = run_finetune(args.config, args.overrides, annotations=args.annotations, encoder=args.encoder, out=args.out,
                           task=args.task, frames=args.frames, resume=args.resume or None,
                           overwrite=args.overwrite or None)
    print(run_dir / ENCODER_FILE)
    return 0
