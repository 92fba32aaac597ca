"""Writing `analyze`'s per-frame table as CSV: pandas ``to_csv`` with ``float_format`` (the reference)
against :func:`affectmae.inference.table.write_table`, side by side in one run, on the same table.

    OMP_NUM_THREADS=1 python benchmarks/bench_table.py                  # 90,000 rows (about 46,000 frames, 2 faces)
    OMP_NUM_THREADS=1 python benchmarks/bench_table.py --rows 20000 --names openface

The table comes from :func:`affectmae.inference.table.build_table` on made-up detections: two tracks over
every frame but a no-face gap (NaN values, <NA> AUs, empty expression), analysed at stride 2 (interpolated
rows), a video name with a comma (a quoted field). Both writers must give the same bytes; the script says
so and prints the best of ``--repeats`` timings of each and the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from affectmae.inference.table import build_table, csv_frame, write_table


def make_table(rows: int, seed: int = 0) -> pd.DataFrame:
    """``rows`` rows: frames at 25 fps, two faces on all but 3 % of them (no-face rows)."""
    rng = np.random.default_rng(seed)
    n_frames = rows // 2 + rows // 60 + 2
    analysed = np.arange(0, n_frames, 2)
    gap = (analysed > n_frames * 0.4) & (analysed < n_frames * 0.43)
    det_frames = np.concatenate([analysed[~gap], analysed[~gap]])
    det_ids = np.repeat([0, 1], (~gap).sum())
    n = len(det_frames)
    boxes = np.sort(rng.uniform(0, 640, (n, 4)), axis=1).astype(np.float32)
    landmarks = rng.uniform(0, 640, (n, 5, 2)).astype(np.float32)
    scores = rng.uniform(0.5, 1, n).astype(np.float32)
    expr = rng.dirichlet(np.ones(8), n).astype(np.float32)
    predictions = {"va": rng.uniform(-1, 1, (n, 2)).astype(np.float32), "expr": expr,
                   "au": rng.uniform(0, 1, (n, 12)).astype(np.float32)}
    times = np.arange(n_frames) / 25.0
    table = build_table(det_frames, det_ids, boxes, scores, landmarks, predictions, times, 2, None,
                        input_name="clips/day 1, camera 2.mp4")
    return table.iloc[:rows].reset_index(drop=True)


def write_table_previous(df: pd.DataFrame, path: Path, names: str = "affectmae") -> Path:
    """pandas ``to_csv`` with ``float_format="%.5g"``: the reference whose bytes ``write_table`` reproduces."""
    csv_frame(df, names).to_csv(path, index=False, float_format="%.5g")
    return path


def best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def machine() -> str:
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{model or platform.processor() or platform.machine()}, {os.cpu_count()} cpus, Python "
            f"{platform.python_version()}, pandas {pd.__version__}, numpy {np.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=90_000)
    parser.add_argument("--names", choices=("affectmae", "openface"), default="affectmae")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    df = make_table(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        old, new = Path(tmp) / "previous.csv", Path(tmp) / "new.csv"
        t_old = best_of(lambda: write_table_previous(df, old, args.names), args.repeats)
        t_new = best_of(lambda: write_table(df, new, args.names), args.repeats)
        same = old.read_bytes() == new.read_bytes()
        size = new.stat().st_size
    print(f"table: {len(df)} rows x {df.shape[1]} columns, names={args.names}, CSV {size / 1e6:.1f} MB")
    print(f"pandas to_csv:                    {t_old:7.2f} s")
    print(f"write_table:                     {t_new:7.2f} s   ({t_old / t_new:.1f}x)")
    print(f"same bytes: {same}")
    print(f"machine: {machine()}")
    if not same:
        raise SystemExit("the two writers disagree")


if __name__ == "__main__":
    main()
