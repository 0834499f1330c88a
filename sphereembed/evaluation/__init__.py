"""Evaluation: retrieval, verification, calibration and uncertainty metrics."""
