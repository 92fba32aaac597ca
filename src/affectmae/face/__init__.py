"""Finding, aligning and following faces: detectors, 5-point alignment, key-frame detection, tracking and re-identification."""
