"""Dataset readers: Aff-Wild2 annotations and frames, and the face-image collections (folders, FER2013, FER+, RAF-DB, AffectNet)."""
