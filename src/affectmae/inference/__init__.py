"""Inference library: model directories, predictions, video analysis. Never imports affectmae.training."""
