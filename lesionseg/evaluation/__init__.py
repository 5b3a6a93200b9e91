"""How good a model is: evaluation, statistics, review flags, lesion sizes, calibration, cross-validation."""
