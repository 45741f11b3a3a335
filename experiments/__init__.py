"""Reproducible experiments that put cupytv's layers to work (see each folder's README)."""
