"""Memory of a streamed epoch: bounded by chunks, whatever the data size (issue 14, item 8)."""

import ctypes
import mmap
import weakref

import dask.array as da
import numpy as np
import pytest

from pipeline import _stream
from pipeline.stream import chunks


def _root(a):
    """The object that owns ``a``'s memory."""
    while isinstance(a, np.ndarray) and a.base is not None:
        a = a.base
    return a.obj if isinstance(a, memoryview) else a


def _nbytes(buffer):
    return buffer.nbytes if isinstance(buffer, np.ndarray) else len(buffer)


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("rows", [256, 4096])  # buffers from numpy, and mappings of their own
def test_a_chunk_holds_only_its_own_samples(shuffle, rows):
    """A chunk kept (by a consumer, or a step in flight) keeps no window alive."""
    X = da.random.random((20_000, 64), chunks=(1000, 64)).astype("float32")
    y = da.arange(20_000, chunks=1000)
    got = list(chunks(X, y, batch_size=rows // 4, n_batches=4, shuffle=shuffle, window=3))
    for c in got:
        for a in (c.X, c.y):
            assert _nbytes(_root(a)) == a.nbytes
    assert not any(np.shares_memory(a.X, b.X) for a, b in zip(got, got[1:], strict=False))


def test_a_window_is_released_before_the_next_is_read():
    """Store chunks alive while a block is read: at most two windows' (one at its edge)."""
    blocks, most = [], [0]

    def block(block_info=None):
        most[0] = max(most[0], sum(ref() is not None for ref in blocks))
        (lo, hi), _ = block_info[None]["array-location"]
        out = np.repeat(np.arange(lo, hi, dtype="float32")[:, None], 8, axis=1)
        blocks.append(weakref.ref(out))
        return out

    X = da.map_blocks(block, chunks=((500,) * 40, (8,)), dtype="float32")
    stream = chunks(X, batch_size=100, n_batches=3, window=4, prefetch=0)
    rows = np.concatenate([c.X[c.mask][:, 0] for c in stream])
    np.testing.assert_array_equal(np.sort(rows), np.arange(20_000))
    assert most[0] <= 2 * 4


def test_padding_is_zero_in_own_mappings():
    X = da.ones((5000, 300), chunks=(1000, 300), dtype="float32")
    last = list(chunks(X, batch_size=1000, n_batches=3))[-1]
    assert isinstance(_root(last.X), mmap.mmap)
    assert last.mask.sum() == 2000 and not last.X[~last.mask].any() and last.X[last.mask].all()


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
        .split()
    ]


@pytest.mark.skipif(
    _stream._LIBC is None or not hasattr(_stream._LIBC, "mallinfo2"), reason="glibc only"
)
@pytest.mark.skipif(_stream._ALLOCATOR_SET_BY_USER, reason="the user set the allocator")
def test_after_a_streamed_epoch_large_blocks_still_get_mappings_of_their_own():
    """glibc's dynamic threshold would serve an 8 MB block from an arena after a 16 MB
    one is freed, and keep it there: a streamed fit's memory grew with the data read."""
    list(chunks(da.ones((100, 4), chunks=50), batch_size=10))
    mallinfo2 = _stream._LIBC.mallinfo2
    mallinfo2.restype = _MallInfo2
    np.ones(16 << 18, dtype="float32")  # 16 MB, freed at once
    mapped = mallinfo2().hblkhd
    block = np.ones(8 << 18, dtype="float32")  # 8 MB
    assert mallinfo2().hblkhd >= mapped + block.nbytes
