"""Submission CSV read/write and ``affectmae score`` end to end on small hand-written annotation folders."""

import json

import numpy as np
import pytest
from sklearn.metrics import f1_score

from affectmae.cli import main
from affectmae.errors import AffectMAEError, InputFormatError
from affectmae.evaluation.submission import read_submission, write_submission
from affectmae.tasks import ACTION_UNITS, EXPRESSIONS

VA_HEADER = "image_location,valence,arousal"
EXPR_HEADER = "image_location," + ",".join(EXPRESSIONS)
AU_HEADER = "image_location," + ",".join(ACTION_UNITS)


def _write(path, header, rows):
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _score(capsys, *argv):
    code = main(["score", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def va_dir(tmp_path):
    ann = tmp_path / "VA_Estimation_Challenge" / "Validation_Set"
    ann.mkdir(parents=True)
    _write(ann / "vidA.txt", "valence,arousal", ["0.1,0.2", "0.3,0.4", "-5,-5", "0.5,0.0"])
    _write(ann / "vidB_left.txt", "valence,arousal", ["-0.2,0.6", "0.4,-0.1"])
    return ann


def test_write_read_round_trip_exact_text(tmp_path):
    path = tmp_path / "va.csv"
    rows = write_submission("va", path, {"v1": np.array([[0.5, -0.25], [1.0, 0.0]]), "v2": ([4], [[0.125, -1.0]])})
    assert rows == 3
    assert path.read_text() == (
        "image_location,valence,arousal\nv1/00001.jpg,0.500000,-0.250000\nv1/00002.jpg,1.000000,0.000000\n"
        "v2/00005.jpg,0.125000,-1.000000\n"
    )
    back = read_submission("va", path)
    assert list(back) == ["v1", "v2"]
    np.testing.assert_array_equal(back["v2"][0], [4])
    np.testing.assert_allclose(back["v1"][1], [[0.5, -0.25], [1.0, 0.0]])
    assert back["v1"][1].dtype == np.float64


def test_expr_and_au_files_one_index_per_row(tmp_path):
    expr = tmp_path / "expr.csv"
    write_submission("expr", expr, {"v": np.array([3, 0, 7])})
    assert expr.read_text().splitlines() == [EXPR_HEADER, "v/00001.jpg,3", "v/00002.jpg,0", "v/00003.jpg,7"]
    write_submission("expr", expr, [("w", np.eye(8)[[2, 6]])])  # scores are arg-maxed; generator of pairs works
    frames, labels = read_submission("expr", expr)["w"]
    assert frames.tolist() == [0, 1] and labels.tolist() == [2, 6]
    au = tmp_path / "au.csv"
    write_submission("au", au, {"v": np.eye(12, dtype=int)[[0, 11]]})
    assert au.read_text().splitlines()[2] == "v/00002.jpg,0,0,0,0,0,0,0,0,0,0,0,1"
    with pytest.raises(AffectMAEError, match="0/1 \\(threshold probabilities first\\), frame v/00001.jpg has 0.7"):
        write_submission("au", tmp_path / "bad.csv", {"v": np.full((1, 12), 0.7)})
    assert not (tmp_path / "bad.csv").exists()  # atomic: nothing left behind
    with pytest.raises(AffectMAEError, match="arousal must be in \\[-1, 1\\], frame v/00002.jpg has 1.5"):
        write_submission("va", tmp_path / "bad.csv", {"v": [[0, 0], [0, 1.5]]})


@pytest.mark.parametrize(
    "task, header, rows, message",
    [
        ("va", "image_location,valence", ["v/00001.jpg,0.1"],
         ":1: wrong header: expected 'image_location,valence,arousal', found 'image_location,valence'"),
        ("va", AU_HEADER, ["v/00001.jpg,0.1,0.2"], "(this is the header of a AU submission)"),
        ("va", VA_HEADER, ["v/00001.jpg,0.1,0.2", "v/00002.jpg,0.1"], ":3: expected 3 comma-separated fields, found 2"),
        ("va", VA_HEADER, ["v/00001.jpg,0.1,0.2,0.3"], ":2: expected 3 comma-separated fields, found 4"),
        ("va", VA_HEADER, ["v/00001.jpg,0.1,0.2", "", "v/00002.jpg,0.1,0.2"], ":3: blank line between rows"),
        ("va", VA_HEADER, ["v/00001.jpg,abc,0.2"], ":2: valence = 'abc' is not a number"),
        ("va", VA_HEADER, ["v/00001.jpg,0.1,0.2", "v/00002.jpg,0.1,-1.2"], ":3: arousal = '-1.2' is out of range"),
        ("va", VA_HEADER, ["v/1.jpg,0.1,0.2"], ":2: image_location 'v/1.jpg' is not '<video>/NNNNN.jpg'"),
        ("va", VA_HEADER, ["v/00000.jpg,0.1,0.2"], ":2: image_location 'v/00000.jpg': frame numbers start at 00001"),
        ("va", VA_HEADER, ["v/00001.jpg,0.1,0.2", "w/00001.jpg,0,0", "v/00001.jpg,0,0"],
         ":4: duplicate row for v/00001.jpg (first at line 2)"),
        ("va", VA_HEADER, [], ":2: no prediction rows after the header"),
        ("expr", EXPR_HEADER, ["v/00001.jpg,8"], ":2: expression = '8' is out of range; expected one class index 0..7"),
        ("expr", EXPR_HEADER, ["v/00001.jpg,2.5"], ":2: expression = '2.5' is out of range"),
        ("expr", EXPR_HEADER, ["v/00001.jpg," + ",".join("0" * 8)],
         ":2: expected 2 comma-separated fields (image_location and one class index), found 9"),
        ("au", AU_HEADER, ["v/00001.jpg," + ",".join("0" * 11) + ",2"], ":2: AU26 = '2' is out of range; expected 0 or 1"),
    ],
)
def test_read_submission_errors_name_file_and_line(tmp_path, task, header, rows, message):
    path = _write(tmp_path / "pred.csv", header, rows)
    with pytest.raises(InputFormatError) as info:
        read_submission(task, path)
    assert str(info.value).startswith(str(path) + ":")
    assert message in str(info.value)


def test_read_submission_tolerates_crlf_bom_trailing_blank_lines(tmp_path):
    path = tmp_path / "pred.csv"
    path.write_bytes(b"\xef\xbb\xbfimage_location,valence,arousal\r\nv/00002.jpg,0.1,0.2\r\nv/00001.jpg,-1,1\r\n\r\n\r\n")
    frames, values = read_submission("va", path)["v"]
    assert frames.tolist() == [0, 1]  # sorted by frame
    np.testing.assert_allclose(values, [[-1, 1], [0.1, 0.2]], rtol=1e-6)


def test_score_va_perfect_and_imperfect(va_dir, tmp_path, capsys):
    perfect = _write(tmp_path / "p.csv", VA_HEADER, [
        "vidA/00001.jpg,0.1,0.2", "vidA/00002.jpg,0.3,0.4", "vidA/00004.jpg,0.5,0.0",
        "vidB_left/00001.jpg,-0.2,0.6", "vidB_left/00002.jpg,0.4,-0.1",
        "vidA/00003.jpg,0.9,0.9",  # frame with an invalid label: ignored
        "vidA/00009.jpg,0.9,0.9",  # past the annotations: ignored
        "other/00001.jpg,0,0",  # video without annotation file: ignored
    ])
    code, out, _ = _score(capsys, "--task", "va", perfect, va_dir)
    assert code == 0
    result = json.loads(out)
    assert result["score"] == pytest.approx(1.0) and result["ccc_valence"] == pytest.approx(1.0)
    assert (result["frames_scored"], result["videos"], result["rows"], result["rows_ignored"]) == (5, 2, 8, 3)
    # Valence true [0.1,0.3,0.5,-0.2,0.4]; predicting 0 everywhere gives CCC 0; arousal predicted = true / 2
    true_a = np.array([0.2, 0.4, 0.0, 0.6, -0.1])
    locs = ["vidA/00001.jpg", "vidA/00002.jpg", "vidA/00004.jpg", "vidB_left/00001.jpg", "vidB_left/00002.jpg"]
    imperfect = _write(tmp_path / "i.csv", VA_HEADER, [
        f"{loc},0,{a / 2:.6f}" for loc, a in zip(locs, true_a, strict=True)
    ])
    code, out, err = _score(capsys, "--task", "va", imperfect, va_dir)
    assert code == 0, err
    result = json.loads(out)
    # x = y/2: cov = var_y/2, var_x = var_y/4, mean_x = mean_y/2 -> CCC = var_y / (5/4 var_y + mean_y^2/4)
    var_y, mean_y = true_a.var(), true_a.mean()
    expected_a = var_y / (1.25 * var_y + mean_y**2 / 4)
    assert result["ccc_valence"] == 0.0
    assert result["ccc_arousal"] == pytest.approx(expected_a, rel=1e-5)
    assert result["score"] == pytest.approx(expected_a / 2, rel=1e-5)
    assert set(result) == {"task", "score", "ccc_valence", "ccc_arousal", "frames_scored", "videos", "rows", "rows_ignored"}


def test_score_missing_frames_exit_2(va_dir, tmp_path, capsys):
    pred = _write(tmp_path / "p.csv", VA_HEADER, ["vidA/00001.jpg,0.1,0.2", "vidA/00003.jpg,0.1,0.2"])
    code, out, err = _score(capsys, "--task", "va", pred, va_dir)
    assert code == 2 and out == ""
    assert "4 frames with a valid label" in err
    assert "(first: vidA/00002.jpg, vidA/00004.jpg, vidB_left/00001.jpg, vidB_left/00002.jpg)" in err


def test_score_malformed_header_names_line_1(va_dir, tmp_path, capsys):
    pred = _write(tmp_path / "p.csv", "location,valence,arousal", ["vidA/00001.jpg,0.1,0.2"])
    code, _, err = _score(capsys, "--task", "va", pred, va_dir)
    assert code == 2
    assert f"affectmae score: error: {pred}:1: wrong header: expected 'image_location,valence,arousal'" in err


def test_score_wrong_folder_hint(va_dir, tmp_path, capsys):
    pred = _write(tmp_path / "p.csv", VA_HEADER, ["vidA/00001.jpg,0.1,0.2"])
    code, _, err = _score(capsys, "--task", "va", pred, tmp_path)
    assert code == 2 and f"e.g. {va_dir}" in err


def test_score_expr_matches_sklearn(tmp_path, capsys):
    ann = tmp_path / "expr"
    ann.mkdir()
    true = {"a": [0, 1, 1, 2, -1, 4], "b": [7, 7, 0, 3]}
    pred = {"a": [0, 1, 2, 2, 5, 4], "b": [7, 0, 0, 6]}
    for v, labels in true.items():
        _write(ann / f"{v}.txt", ",".join(EXPRESSIONS), map(str, labels))
    csv = tmp_path / "expr.csv"
    write_submission("expr", csv, {v: np.array(p) for v, p in pred.items()})
    code, out, _ = _score(capsys, "--task", "expr", csv, ann)
    result = json.loads(out)
    t = np.array(true["a"] + true["b"])
    p = np.array(pred["a"] + pred["b"])
    keep = t != -1
    expected = f1_score(t[keep], p[keep], average="macro", labels=list(range(8)), zero_division=0)
    assert code == 0 and result["score"] == pytest.approx(expected, abs=1e-12)
    assert result["frames_scored"] == 9 and result["rows_ignored"] == 1
    assert list(result["f1_per_class"]) == list(EXPRESSIONS)
    assert result["f1_per_class"]["Anger"] == pytest.approx(2 / 3)  # tp 1, fp 0, fn 1


def test_score_au_perfect_and_against_sklearn(tmp_path, capsys):
    ann = tmp_path / "au"
    ann.mkdir()
    rng = np.random.default_rng(3)
    true = rng.integers(0, 2, size=(9, 12))
    true[4] = -1  # invalid frame
    _write(ann / "v.txt", ",".join(ACTION_UNITS), [",".join(map(str, r)) for r in true])
    csv = tmp_path / "au.csv"
    write_submission("au", csv, {"v": np.where(true < 0, 0, true)})
    code, out, _ = _score(capsys, "--task", "au", csv, ann)
    assert code == 0 and json.loads(out)["score"] == 1.0
    noisy = np.where(true < 0, 0, true)
    noisy[:3] = 1 - noisy[:3]
    write_submission("au", csv, {"v": noisy})
    _, out, _ = _score(capsys, "--task", "au", csv, ann)
    result = json.loads(out)
    keep = np.arange(9) != 4
    ref = [f1_score(true[keep, j], noisy[keep, j], zero_division=0) for j in range(12)]
    np.testing.assert_allclose(list(result["f1_per_au"].values()), ref, atol=1e-12)
    assert result["score"] == pytest.approx(np.mean(ref)) and result["frames_scored"] == 8


def test_score_wrong_task_names_annotation_file(va_dir, tmp_path, capsys):
    pred = _write(tmp_path / "p.csv", EXPR_HEADER, ["vidA/00001.jpg,1"])
    code, _, err = _score(capsys, "--task", "expr", pred, va_dir)
    assert code == 2
    assert f"{va_dir / 'vidA.txt'}:1: wrong header for task expr" in err
    assert "(this is the header of a VA file)" in err


def test_score_config_file_override_and_unknown_key(va_dir, tmp_path, capsys):
    perfect = _write(tmp_path / "p.csv", VA_HEADER, [
        "vidA/00001.jpg,0.1,0.2", "vidA/00002.jpg,0.3,0.4", "vidA/00004.jpg,0.5,0.0",
        "vidB_left/00001.jpg,-0.2,0.6", "vidB_left/00002.jpg,0.4,-0.1"])
    half = _write(tmp_path / "h.csv", VA_HEADER, [
        "vidA/00001.jpg,0.1,0.1", "vidA/00002.jpg,0.3,0.2", "vidA/00004.jpg,0.5,0.0",
        "vidB_left/00001.jpg,-0.2,0.3", "vidB_left/00002.jpg,0.4,-0.05"])
    config = tmp_path / "score.yaml"
    config.write_text(f"task: expr\npred_csv: {half}\nannotation_dir: {va_dir}\n")
    # the file names the EXPR task and h.csv; key=value sets the task, the positional argument the CSV
    code, out, err = _score(capsys, "--config", config, perfect, "task=va")
    assert code == 0, err
    result = json.loads(out)
    assert result["task"] == "va" and result["score"] == pytest.approx(1.0) and result["rows"] == 5
    code, out, err = _score(capsys, "--config", config, "task=va")
    assert code == 0 and json.loads(out)["ccc_arousal"] < 0.99  # the file's h.csv
    code, out, err = _score(capsys, "--config", config, "taks=va")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == ["affectmae score: error: command line: unknown setting 'taks' for "
                                        "ScoreConfig; known: annotation_dir, pred_csv, task"]
