"""Streaming shards for several nodes: litdata chunks of a pack, per-rank sharding and shuffling."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
from PIL import Image

from affectmae.cli import main
from affectmae.datasets.pack import Pack
from affectmae.errors import AffectMAEError, InputFormatError
from affectmae.training.stream_sampler import StreamBatchSampler

needs_litdata = pytest.mark.skipif(importlib.util.find_spec("litdata") is None,
                                   reason="needs the streaming extra: pip install 'affectmae[streaming]' (litdata)")


def _faces(folder, sizes=(120, 100, 90, 80, 70, 64)):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, s in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, (s, s + 3, 3), dtype=np.uint8)).save(folder / f"{i:03d}.jpg")
    (folder / "zz_broken.jpg").write_bytes(b"\xff\xd8 broken")
    return folder


def test_two_ranks_read_disjoint_chunks_in_a_seeded_order():
    sizes = [10, 10, 10, 7]
    starts = np.cumsum([0] + sizes)
    chunk_of = np.repeat(np.arange(4), sizes)
    seen = {}
    for epoch in (0, 1):
        ranks = []
        for rank in (0, 1):
            sampler = StreamBatchSampler(sizes, global_batch=4, rank=rank, world_size=2, seed=5)
            sampler.set_epoch(epoch)
            batches = list(sampler)
            assert len(batches) == sampler.steps_per_epoch == 8 and all(len(b) == 2 for b in batches)
            ranks.append(np.concatenate(batches))
            again = StreamBatchSampler(sizes, global_batch=4, rank=rank, world_size=2, seed=5)
            again.set_epoch(epoch)
            assert np.array_equal(np.concatenate(list(again)), ranks[-1])  # the same order for (seed, epoch)
        a, b = ranks
        assert len(set(a)) == len(a) == 16 and not set(a) & set(b)
        assert not set(chunk_of[a]) & set(chunk_of[b])  # each rank reads only its own chunks
        assert all(0 <= i < starts[-1] for i in np.concatenate(ranks))
        seen[epoch] = (a, b)
    assert not np.array_equal(seen[0][0], seen[1][0])
    sampler = StreamBatchSampler(sizes, global_batch=4, rank=0, world_size=2, seed=5)
    items = sampler.rank_items(0)
    assert items.shape == (2, 17) and len(set(items.ravel())) == 34  # 10 + 7 items each: 34 of 37 this epoch
    with pytest.raises(AffectMAEError, match="2 chunks for 4 processes: each needs at least one"):
        StreamBatchSampler([5, 5], global_batch=4, world_size=4)


def test_without_the_extra_one_line_names_it(monkeypatch):
    from affectmae.datasets.streaming import require_litdata

    monkeypatch.setitem(sys.modules, "litdata", None)
    with pytest.raises(AffectMAEError) as err:
        require_litdata()
    assert str(err.value) == "streaming shards need the optional extra: pip install 'affectmae[streaming]' (litdata)"


@needs_litdata
def test_litdata_shards_hold_the_packed_pixels_and_pretrain_reads_them(tmp_path, capsys):
    from affectmae.datasets.streaming import StreamFaces
    from affectmae.training.metrics_log import read_metrics

    folder = _faces(tmp_path / "faces")
    out = tmp_path / "out"
    assert main(["pack", "--images", f"folder:{folder}", "-o", str(out), "--min-side", "32", "--format",
                 "litdata"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["items"], summary["stream_items"], summary["undecodable"]) == (7, 6, 1)
    assert summary["stream"] == str(out / "litdata") and summary["chunks"] == 1
    pack, stream = Pack(out / "pack"), StreamFaces(out / "litdata")
    assert len(stream) == 6 and stream.meta["min_side"] == 32
    for i in range(6):
        pixels, label = stream[i]
        assert label == -1 and np.array_equal(pixels, pack.pixels(i))  # the broken file (item 6) left out
    run = tmp_path / "run"
    assert main(["pretrain", "-o", str(run), "--config", "pretrain_tiny", f"stream={out / 'litdata'}", "depth=1",
                 "img_size=32", "decoder_dim=32", "decoder_depth=1", "decoder_heads=2", "epochs=2", "batch_size=3",
                 "recon_every_epochs=0", "tensorboard=false"]) == 0
    assert [e["epoch"] for e in read_metrics(run, "epoch")] == [1, 2]
    assert f"stream: {out / 'litdata'}" in (run / "config.yaml").read_text()


@needs_litdata
def test_a_stream_declaring_other_serializers_is_refused(tmp_path):
    from affectmae.datasets.streaming import StreamFaces

    folder = _faces(tmp_path / "faces")
    assert main(["pack", "--images", f"folder:{folder}", "-o", str(tmp_path / "out"), "--format", "litdata"]) == 0
    index = tmp_path / "out" / "litdata" / "index.json"
    data = json.loads(index.read_text())
    data["config"]["data_format"] = ["int", "int", "int", "pickle"]
    index.write_text(json.dumps(data))
    with pytest.raises(InputFormatError) as err:
        StreamFaces(index.parent)
    assert str(err.value).startswith(f"{index}: items declared as ['int', 'int', 'int', 'pickle'], expected ")
