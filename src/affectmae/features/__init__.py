"""Per-frame encoder features: the on-disk store and the extraction job that fills it."""
