"""Benchmark suite: one command each, JSON out."""
