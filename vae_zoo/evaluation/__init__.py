"""Evaluation metrics, the side-by-side comparison and sampling commands."""
