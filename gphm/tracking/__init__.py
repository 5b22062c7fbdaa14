"""Video tracking (per-frame expression code and head pose), reenactment and the
reenactment benchmark on synthetic sequences with ground truth (issue 19)."""
