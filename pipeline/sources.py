"""Readers that yield ``(X_chunk, y_chunk)`` numpy pairs, chunk by chunk.

>>> src = pipeline.sources.read_csv("data/*.csv", target="label")  # doctest: +SKIP
>>> src.feature_names  # one-hot columns named like "color=red"  # doctest: +SKIP
>>> ds = pipeline.store.write("data.zarr", src, attrs=src.attrs())  # doctest: +SKIP
"""

from pipeline._sources import CSVSource, iter_array, read_csv, read_mnist, read_npy

__all__ = ["CSVSource", "iter_array", "read_csv", "read_mnist", "read_npy"]
