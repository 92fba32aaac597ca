"""Dataset readers: Aff-Wild2 annotations and frames, face-image collections, synthetic data, segments, video."""
