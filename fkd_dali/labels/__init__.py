"""Soft labels: teachers, label generation, teacher ensembles, and turning stored top-K labels into targets and a loss."""
