"""Scoring: the student (trees or linear), its compiled tree kernels, and model artifacts."""
