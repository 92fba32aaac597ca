"""benchmarks/gpu_smoke.py: every stage with --device cpu (slow), its failure reporting and exit status."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_smoke.py"
STAGES = ["env", "synth", "pretrain", "finetune", "ddp", "extract", "train", "temporal_bf16", "analyze", "input"]


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_smoke", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_smoke"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def _stage_lines(stdout: str) -> dict[str, list[str]]:
    """STAGE lines -> {name: [status, seconds, throughput..., note]}."""
    found = {}
    for line in stdout.splitlines():
        m = re.match(r"STAGE (\w+): (PASS|FAIL|SKIP) \| (.*)$", line)
        if m:
            found[m.group(1)] = [m.group(2), *m.group(3).split(" | ")]
    return found


def test_a_failed_stage_fails_its_dependants_and_the_summary(capsys):
    smoke = _load_script().Smoke()

    def boom():
        raise ValueError("no such kernel")

    smoke.run("first", boom)
    smoke.run("second", lambda: ("12.5 images/s", "ok"), needs=("first",))
    smoke.run("third", lambda: ("3.0 frames/s", ""))
    smoke.run("fourth", lambda: ("", ""), skip="cpu")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "STAGE first: FAIL | 0.0 s | ValueError: no such kernel"
    assert out[1] == "STAGE second: FAIL | 0.0 s | not run: needs first"
    assert re.fullmatch(r"STAGE third: PASS \| \d+\.\d s \| 3\.0 frames/s", out[2])
    assert out[3] == "STAGE fourth: SKIP | 0.0 s | cpu"
    assert smoke.summary(7.25) == "SMOKE: FAIL 1 passed, 2 failed, 1 skipped in 7.2 s (failed: first, second)"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the report on a machine without CUDA")
def test_cuda_without_a_gpu_fails_every_stage_and_exits_1(capsys, tmp_path):
    status = _load_script().main(["--device", "cuda", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    stages = _stage_lines(out)
    assert status == 1
    assert list(stages) == STAGES
    assert stages["env"][0] == "FAIL"
    assert stages["env"][-1] == "AffectMAEError: device 'cuda' requested but CUDA is not available; use --device cpu"
    assert stages["synth"][-1] == "not run: needs env"
    assert stages["analyze"][-1] == "not run: needs finetune, train"
    assert all(v[0] == "FAIL" for v in stages.values())
    assert re.search(r"^SMOKE: FAIL 0 passed, 10 failed, 0 skipped in [\d.]+ s \(failed: env, synth, pretrain, "
                     r"finetune, ddp, extract, train, temporal_bf16, analyze, input\)$", out, re.M)
    assert list(tmp_path.iterdir()) == []  # nothing was generated


@pytest.mark.slow
def test_every_stage_passes_on_cpu(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stages = _stage_lines(proc.stdout)
    assert list(stages) == STAGES
    assert {name: v[0] for name, v in stages.items()} == {**dict.fromkeys(STAGES, "PASS"), "temporal_bf16": "SKIP",
                                                          "input": "SKIP"}
    assert stages["synth"][-1].startswith("80 frame JPEGs, 48 face images")
    assert re.fullmatch(r"\d+\.\d images/s \(last epoch\)", stages["pretrain"][2])
    assert re.fullmatch(r"\d+\.\d images/s \(train steps \+ validation\)", stages["finetune"][2])
    assert stages["finetune"][-1].startswith("8 steps, val EXPR F1 ")
    assert re.fullmatch(r"backend gloo, world 1, bf16 False, all_reduce ok \(1\), loss \d\.\d{4} -> \d\.\d{4}",
                        stages["ddp"][-1])
    assert stages["extract"][-1] == "92 frames, 3 videos"
    assert re.fullmatch(r"\d+\.\d segments/s \(w=32, fp32\)", stages["train"][2])
    assert stages["temporal_bf16"][-1] == "cpu: bf16 is many times slower than fp32 here"
    assert re.fullmatch(r"\d+ face rows over 30 frames, detector \w+, device cpu", stages["analyze"][-1])
    assert re.search(r"^SMOKE: PASS 8 passed, 0 failed, 2 skipped in [\d.]+ s$", proc.stdout, re.M)
    assert proc.stdout.rstrip().splitlines()[-1].startswith("SMOKE: PASS")
    assert (tmp_path / "model" / "affectmae_model.json").is_file()
    assert (tmp_path / "analyze" / "predictions.csv").is_file()
    assert sorted(p.name for p in (tmp_path / "features").glob("*.npy") if not p.name.endswith(".mask.npy")) == \
        sorted(p.name + ".npy" for p in (tmp_path / "data" / "cropped_aligned").iterdir())
