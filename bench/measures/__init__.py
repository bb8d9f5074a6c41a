"""Set-level measures of a checkpoint's evaluation images, beside the per-image rewards: diversity (diversity.py)
and image-statistics drift (drift.py). They belong to evaluation: they read the rewards' encoders, never train."""
