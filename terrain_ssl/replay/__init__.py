"""Bag reading, deterministic offline replay through the nodes, and the evaluation report."""
