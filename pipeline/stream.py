"""Shuffled, prefetched, deterministic, resumable chunk streams for training.

>>> for X, y, mask in pipeline.stream.chunks(ds.X, ds.y, batch_size=128, epoch=e):  # doctest: +SKIP
...     state = step(state, X, y, mask)   # one jitted lax.scan per chunk
"""

from pipeline._stream import Chunk, ChunkStream, chunks, data_identity, epoch_order

__all__ = ["Chunk", "ChunkStream", "chunks", "data_identity", "epoch_order"]
