"""Precision family: dumps, metrics, thresholds, detection matching, accuracy."""
