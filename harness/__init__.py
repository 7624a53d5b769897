"""Benchmark harness for compressive memory in language models (GradMem and baselines)."""
