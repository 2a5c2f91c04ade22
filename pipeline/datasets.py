"""Named datasets: MNIST and digits in memory, synthetic classification stores of any size.

>>> X, y = pipeline.datasets.load_mnist(split="test")  # doctest: +SKIP
>>> ds = pipeline.datasets.make_classification_store("big.zarr", 10**8, random_state=0)  # doctest: +SKIP
"""

from pipeline._datasets import load_digits, load_mnist, make_classification_store

__all__ = ["load_digits", "load_mnist", "make_classification_store"]
