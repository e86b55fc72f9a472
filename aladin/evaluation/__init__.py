"""Evaluation: retrieval metrics, the COCO protocols for every row, and the cross-encoder evaluation."""
