"""Reproducible training of the router's ONNX artifacts (sentiment specialist, request classifier) from the
data the project ships under ``data/``."""
