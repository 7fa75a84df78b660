"""Experiments: which fine-tuning runs an analysis needs, executed serially or on dask."""
