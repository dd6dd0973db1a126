"""Experiment tracking and the model registry. The only package that imports MLflow."""
