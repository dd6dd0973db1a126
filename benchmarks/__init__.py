"""Benchmarks: compare the project with faiss on the same data, in the same run."""
