"""affectmae: per-frame valence/arousal, expression and action units from face video."""

__version__ = "0.1.0"
