"""Temporal model (TCN + Transformer) vs a per-frame linear model on the same features, per task.

    python benchmarks/temporal_vs_linear.py --features FEATURES --annotations ANNOTATIONS [-o OUT] [--config temporal_tiny]
        [--quick] [key=value ...]

``--oracle-features SYNTH_ROOT`` first writes a features folder from the per-frame *observed* latents of
a dataset made by ``affectmae synth`` (``latents/<video>.npz``: the latent plus per-frame observation
noise, i.e. what an ideal frame encoder would recover; frames without an image are interpolated like
``extract`` does) and uses it as FEATURES.

Both are trained with the same config and validated with the same official per-frame protocol
(fold 0). Prints a markdown table of validation scores and the difference.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

from affectmae.training.temporal import run_train


def oracle_feature_store(synth_root: str, out: str) -> str:
    """FEATURES folder from ``synth_root/latents/<video>.npz`` (observed latents, float16, present mask)."""
    from pathlib import Path

    import numpy as np

    from affectmae.features.store import fill_missing

    root, out_dir = Path(synth_root), Path(out) / "oracle_features"
    out_dir.mkdir(parents=True, exist_ok=True)
    dim = None
    for path in sorted((root / "latents").glob("*.npz")):
        if path.stem == "faces":
            continue
        with np.load(path) as data:
            observed, present = data["observed"].astype(np.float32), data["present"].astype(bool)
        dim = observed.shape[1]
        np.save(out_dir / f"{path.stem}.npy", fill_missing(observed, present, "linear").astype(np.float16))
        np.save(out_dir / f"{path.stem}.mask.npy", present)
    (out_dir / "features.json").write_text(json.dumps({"format": "affectmae-features", "version": 1,
                                                       "encoder": "oracle: observed latents", "dim": dim}))
    return str(out_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--features", default=None)
    parser.add_argument("--oracle-features", default=None, metavar="SYNTH_ROOT",
                        help="use the observed latents of an `affectmae synth` dataset as features")
    parser.add_argument("--annotations", "--data", required=True)
    parser.add_argument("-o", "--out", default=None)
    parser.add_argument("--config", default="temporal_tiny")
    parser.add_argument("--quick", action="store_true", help="fewer epochs (epochs=4)")
    parser.add_argument("--tasks", nargs="+", default=["va", "expr", "au"])
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="temporal_vs_linear_")
    if args.oracle_features:
        args.features = oracle_feature_store(args.oracle_features, out)
    if not args.features:
        parser.error("give --features or --oracle-features")
    overrides = list(args.overrides) + (["epochs=4"] if args.quick else [])
    rows = ["| task | temporal | per-frame linear | difference |", "| --- | --- | --- | --- |"]
    results = {}
    t0 = time.perf_counter()
    for task in args.tasks:
        common = dict(features=args.features, annotations=args.annotations, task=task)
        temporal = run_train(args.config, overrides, out=f"{out}/temporal_{task}", **common)["best"]["score"]
        linear = run_train(args.config, overrides, out=f"{out}/linear_{task}", baseline="linear", **common)["best"]["score"]
        results[task] = {"temporal": temporal, "linear": linear}
        rows.append(f"| {task} | {temporal:.4f} | {linear:.4f} | {temporal - linear:+.4f} |")
    print("\n".join(rows))
    print(json.dumps({"machine": f"{platform.machine()}, python {platform.python_version()}",
                      "seconds": round(time.perf_counter() - t0, 1), "results": results, "runs": out}))


if __name__ == "__main__":
    main()
