"""`affectmae pretrain`: MAE pretraining of the ViT encoder on face images."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="MAE-pretrain the ViT encoder on face images",
        description="Masked-autoencoder pretraining (75 % masking, pixel loss on masked patches). Defaults follow "
        "the paper (ViT-B, 112 px, batch 1024, lr 5e-4 = base_lr 1.25e-4 x 1024/256, 500 epochs); "
        "--config pretrain_tiny gives a CPU-sized run. Trailing key=value pairs override the config, e.g. "
        "epochs=10 batch_size=64. Multi-GPU: torchrun --nproc_per_node N -m affectmae pretrain ...",
    )
    p.add_argument("--images", "--data", action="append", default=None, metavar="SPEC",
                   help="face images: an image folder, or folder:PATH, fer2013:PATH/fer2013.csv, ferplus:..., "
                   "rafdb:..., affectnet:... (repeat to combine); or none with stream=DIR (litdata shards)")
    p.add_argument("-o", "--out", required=True, help="run folder")
    p.add_argument("--config", default=None, help="YAML config file or packaged name (pretrain_paper, pretrain_tiny)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last_state.safetensors")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from affectmae.checkpoint import ENCODER_FILE
    from affectmae.training.pretrain import run_pretrain

    run_dir = run_pretrain(args.config, args.overrides, images=args.images, out=args.out, resume=args.resume or None,
                           overwrite=args.overwrite or None)
    print(run_dir / ENCODER_FILE)
    return 0
