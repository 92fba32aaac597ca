"""`affectmae pack`: decode face images or Aff-Wild2 frames once into a packed folder read by later epochs."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "pack",
        help="decode face images (--images) or Aff-Wild2 frames (--frames) once into a packed folder",
        description="Writes PACK/pack.json and PACK/shard_*.{pixels,index}.npy + .errors.json: the pixels the JPEG "
        "path decodes, read without JPEG decoding by pretrain/finetune/extract given pack=PACK. A killed run is "
        "finished by running the same command again (written shards are kept).",
    )
    p.add_argument("--images", action="append", default=None,
                   help="a face-image source, as for pretrain (repeat): folder:PATH, fer2013:..., rafdb:..., ...")
    p.add_argument("--frames", default=None, help="Aff-Wild2 cropped_aligned folder (or the folder holding it)")
    p.add_argument("-o", "--out", required=True, help="packed folder")
    p.add_argument("--min-side", type=int, default=None,
                   help="decode JPEGs reduced to at least this shorter side (faces: 224, the default of pretrain's "
                        "decode_min_side at 112 px; frames: 0, full size)")
    p.add_argument("--decoder", choices=("auto", "simplejpeg", "pillow"), default="auto")
    p.add_argument("--shard-size", type=int, default=None, help="images per shard (faces 2048, frames 4096)")
    p.add_argument("--workers", type=int, default=0, help="decoding processes (default 0: this process)")
    p.add_argument("--overwrite", action="store_true", help="replace a pack of other data in -o")
    p.add_argument("--format", choices=("affectmae", "litdata"), default="affectmae",
                   help="litdata (face images; pip install 'affectmae[streaming]'): the pack in OUT/pack, then its "
                        "images as litdata chunks in OUT/litdata, for pretrain stream=OUT/litdata on several nodes")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from affectmae.datasets.pack import run_pack

    summary = run_pack(args.images, args.frames, args.out, args.min_side, args.decoder, args.shard_size,
                       args.workers, args.overwrite, args.format)
    print(json.dumps(summary))
    return 0
