"""Training: the loop, its configuration on disk (checkpoints, run log), schedules, precision, evaluation."""
