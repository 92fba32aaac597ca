"""`affectmae demo` end to end through the real CLI, at a scale that runs in about a minute."""

from __future__ import annotations

import json

import pandas as pd

from affectmae.cli import main
from affectmae.evaluation.teacher import find_fer_model
from affectmae.tasks import ACTION_UNITS, EXPRESSIONS


def test_demo_runs_every_stage_and_reports_where_outputs_are(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "-o", str(out), "--videos", "4", "--frames", "40", "--faces", "48", "--analyze-frames", "45",
                 "--analyze-video", "generated",
                 "--ablation-seeds", "0", "1", "--finetune-steps", "24"])
    assert code == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "demo_summary.json").read_text())
    assert list(summary["seconds"]) == ["synth", "pretrain", "finetune", "extract", "train", "cv", "ablate", "export",
                                        "predict+score", "analyze"]
    # Table 1: five folds plus the mean; Table 5: the four paper rows plus the linear baseline
    cv_rows = [line.split("|")[1].strip() for line in summary["cv_table"].splitlines()[2:] if line.startswith("|")]
    assert cv_rows[:9] == ["Fold 0", "Fold 1", "Fold 2", "Fold 3", "Fold 4", "Mean",
                           "per-frame linear, same features (mean over folds)", "chance: uniform random (mean over folds)",
                           "chance: majority class, mean VA, all-ones AU (mean over folds)"]
    # the realistic set: real photographs, validation people unseen in training
    info = json.loads((out / "data" / "synth_info.json").read_text())
    assert info["parameters"]["source"] == "photos"
    assert not set(info["people"]["split"]["train"]) & set(info["people"]["split"]["val"])
    # Table 5: the paper's rows and every baseline, each a mean ± std over the two seeds
    ablation_rows = {line.split("|")[1].strip(): line for line in summary["ablation_table"].splitlines()[2:]
                     if line.startswith("|")}
    for row in ("ours (TCN + Transformer)", "w/o fine-tuning", "w/o TCN", "w/o Transformer", "per-frame linear",
                "raw pixels (TCN + Transformer)", "raw pixels (per-frame linear)",
                "random-init encoder (TCN + Transformer)"):
        assert ablation_rows[row].count(" ± ") == 4, ablation_rows[row]
    # the reference rows: the FER2013 CNN's features, extracted when its model file is fetched, else "not run"
    teacher_rows = ("FER2013 CNN features (TCN + Transformer)", "FER2013 CNN features (per-frame linear)")
    if find_fer_model() is not None:
        assert json.loads((out / "features_teacher" / "features.json").read_text())["dim"] == 128
        assert all(ablation_rows[row].count(" ± ") == 4 for row in teacher_rows), summary["ablation_table"]
    else:
        assert all(ablation_rows[row] == f"| {row} | not run | not run | not run | not run |" for row in teacher_rows)
        assert not (out / "features_teacher").exists()
    assert "Table 5 (mean ± std over seeds 0, 1)" in printed
    assert (out / "cv" / "cv_results.csv").is_file() and (out / "ablate" / "ablation_results.csv").is_file()
    # the submission files were scored against the validation annotations
    scores = json.loads((out / "predictions" / "scores.json").read_text())
    assert set(scores) == {"va", "expr", "au"}
    assert all(-1.0 <= s["score"] <= 1.0 and s["frames_scored"] > 0 for s in scores.values())
    header = (out / "predictions" / "expr_predictions.csv").read_text().splitlines()[0]
    assert header == "image_location," + ",".join(EXPRESSIONS)
    # analyze: one row per (frame, face), frames without a face flagged, both rendered faces found
    table = pd.read_csv(out / "analyze" / "predictions.csv")
    assert {"frame", "time_s", "face_id", "valence", "arousal", "expression", *ACTION_UNITS}.issubset(table.columns)
    assert set(range(45)) == set(table["frame"])
    assert (~table["face_detected"]).sum() == summary["analyze_frames_without_face"] == 10
    assert table.loc[table["face_detected"]].groupby("frame").size().max() == 2
    assert len(summary["analyze_plots"]) >= 3
    for where in ("demo_summary.json", "predictions.csv", "va_predictions.csv", "model directory"):
        assert where in printed
