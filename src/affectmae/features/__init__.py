"""Per-frame encoder features: the on-disk store (store), frame counts and decoding (frames), and the extraction job that fills the store (extract)."""
