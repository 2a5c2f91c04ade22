"""Directories that say what they are and appear whole or not at all.

Every directory pipeline writes (a store, a model, a checkpoint, a Pipeline, a
cache) is built in a hidden sibling ``.NAME.partial-XXXXXXXX`` and published at
its path in one atomic step, so the path always holds either the complete old
object or the complete new one:

- nothing at the path: ``renameat2(RENAME_NOREPLACE)``; of two writers exactly
  one wins, the other gets ``FileExistsError``;
- an object of the same kind, with ``overwrite=True``: ``renameat2(RENAME_EXCHANGE)``
  swaps old and new in one step, then the old one, now in the hidden sibling, is
  removed. Were a foreign directory put there meanwhile, it is swapped back.

Where the kernel or file system has no ``renameat2`` the same steps run under a
lock with two plain renames (the path is briefly empty, never mixed).

Each object holds a small ``pipeline.json`` marker (its kind and uid) written
last. Objects written before markers existed are recognised by their Zarr or
schema metadata. A writer holds an ``flock`` on its partial directory while it
writes; a later writer to the same path removes leftovers whose writer is gone,
and only its own kinds: never a user's file or a directory it cannot recognise.

On non-local fsspec URLs (no rename there) the object is written in place; with
``overwrite=True`` the old object of the same kind is removed first.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ctypes
import datetime
import errno
import fcntl
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import fsspec

__all__ = [
    "KINDS",
    "MARKER",
    "atomic_dir",
    "check_destination",
    "describe",
    "kind_of",
    "local_path",
    "read_marker",
]

KINDS = ("store", "model", "checkpoint", "pipeline", "cache")
MARKER = "pipeline.json"  # {"kind", "uid", "created"}: written last, says what the directory is
_PARTIAL = ".partial-"
_OLD = ".old-"
_CLAIM = ".pipeline-partial"  # in a partial directory: which kind is being written there
# the entries an object of each kind is made of; anything else inside it is not ours
_OWNED = {
    "store": {"zarr.json", "X", "y", "X.npy", "y.npy", "schema.json", MARKER},
    "model": {"zarr.json", "params", "state", "opt_state", "key", "classes", MARKER},
    "checkpoint": {"zarr.json", "model", "replicas", "best", MARKER},
    "pipeline": {"zarr.json", "steps", MARKER},
}
_LEGACY_AGE = 3600.0  # seconds: a legacy leftover (no claim, no lock) older than this is stale
# the attribute keys under which older files said what they are (before MARKER)
_LEGACY_ATTRS = {
    "pipeline": "store",
    "pipeline-model": "model",
    "pipeline-parallel-checkpoint": "checkpoint",
    "pipeline-pipeline": "pipeline",
}


# ----------------------------------------------------------------------------- locations


def local_path(path):
    """The local ``Path`` behind ``path``, or None for a non-local fsspec URL.

    Raises
    ------
    TypeError
        ``path`` is neither a str nor an ``os.PathLike``.
    """
    if isinstance(path, os.PathLike):
        return Path(path)
    if not isinstance(path, str):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    if path.startswith("file://"):
        return Path(path[len("file://") :])
    if "://" in path:
        return None
    return Path(path)


def url_fs(path):
    """``(filesystem, path)`` of an fsspec URL, with a clear error for a missing driver."""
    try:
        return fsspec.core.url_to_fs(path)
    except ImportError as exc:
        protocol = str(path).split("://", 1)[0]
        raise ImportError(
            f"{path}: reading or writing {protocol}:// URLs needs an fsspec driver that is not "
            f"installed ({exc}); install it (e.g. `pip install s3fs` for s3://, gcsfs for gs://)"
        ) from exc
    except ValueError as exc:
        if "protocol" in str(exc).lower():
            raise ValueError(f"{path}: unknown URL protocol ({exc})") from None
        raise


# ----------------------------------------------------------------------------- what is there


def read_marker(path):
    """The marker dictionary of the object at ``path`` (local or URL), or None."""
    local = local_path(path)
    try:
        if local is not None:
            text = (local / MARKER).read_text()
        else:
            fs, p = url_fs(path)
            text = fs.cat_file(p.rstrip("/") + "/" + MARKER).decode()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    try:
        marker = json.loads(text)
    except ValueError:
        return {"kind": None, "corrupt": True}
    return marker if isinstance(marker, dict) else {"kind": None, "corrupt": True}


def _legacy_kind(path, local):
    """The kind of an object written before markers, from its own metadata."""
    if local is not None:
        if (local / "schema.json").is_file():
            return "store"
        try:
            meta = json.loads((local / "zarr.json").read_text())
        except (OSError, ValueError):
            return None
    else:
        fs, p = url_fs(path)
        try:
            meta = json.loads(fs.cat_file(p.rstrip("/") + "/zarr.json"))
        except (OSError, ValueError):
            return None
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    if not isinstance(attrs, dict):
        return None
    return next((kind for key, kind in _LEGACY_ATTRS.items() if key in attrs), None)


def kind_of(path):
    """Which pipeline object the directory at ``path`` holds, or None.

    Returns
    -------
    str or None
        One of :data:`KINDS`, or None when nothing is there, or what is there is
        a file, a foreign directory, or a pipeline object whose write never finished.
    """
    local = local_path(path)
    if local is not None and not local.is_dir():
        return None
    marker = read_marker(path)
    if marker is not None:
        return marker.get("kind") if marker.get("kind") in KINDS else None
    return _legacy_kind(path, local)


def _kind_words(kind):
    return "a saved pipeline.Pipeline" if kind == "pipeline" else f"a pipeline {kind}"


def describe(path):
    """A few words on what is at ``path``, for error messages."""
    local = local_path(path)
    if local is None:
        fs, p = url_fs(path)
        if not fs.exists(p):
            return "nothing"
        kind = kind_of(path)
        if kind:
            return _kind_words(kind)
        if fs.exists(p.rstrip("/") + "/" + _CLAIM):
            return "a pipeline object being written now, or whose write never finished"
        return "data that is not a pipeline object"
    if not local.exists() and not local.is_symlink():
        return "nothing"
    if not local.is_dir():
        return "a file" if local.is_file() else "something that is not a directory"
    kind = kind_of(local)
    if kind:
        return _kind_words(kind)
    names = sorted(p.name for p in local.iterdir())
    if not names:
        return "an empty directory"
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"a directory of {len(names)} entries that is not a pipeline object ({shown})"


def _writable_parent(local):
    parent = local.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"cannot write to {local}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write to {local}: {parent} is not writable")


def check_destination(path, kind, *, overwrite=False):
    """Refuse a destination before any work is done, saying what is there and where.

    Parameters
    ----------
    path : str or os.PathLike
        Where a pipeline object of ``kind`` is to be written.
    kind : {"store", "model", "checkpoint", "pipeline", "cache"}
    overwrite : bool
        Whether an existing object of the same kind (or an empty directory) may
        be replaced. Anything else is never replaced.

    Raises
    ------
    FileExistsError
        Something is at ``path`` and ``overwrite`` is False, or what is there is
        not a pipeline ``kind`` (a file, a user's directory, another kind).
    PermissionError, NotADirectoryError
        The directory that would hold ``path`` is not writable, or is a file.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    local = local_path(path)
    if local is not None:
        if local.is_symlink():
            raise FileExistsError(
                f"refusing to write {_kind_words(kind)} to {path}: it is a symbolic link (to "
                f"{os.readlink(local)}); write to the path it points to instead"
            )
        _writable_parent(local)
        _refuse_nesting(path, local, kind)
        exists = local.exists() or local.is_symlink()
        empty = exists and local.is_dir() and not any(local.iterdir())
    else:
        fs, p = url_fs(path)
        exists = fs.exists(p)
        empty = exists and fs.isdir(p) and not fs.ls(p)
    if not exists:
        return
    what = describe(path)
    if not empty and kind_of(path) != kind:
        raise FileExistsError(
            f"refusing to write {_kind_words(kind)} to {path}: it holds {what}, and overwrite "
            f"replaces only {_kind_words(kind)}; choose another path or remove it yourself"
        )
    if not overwrite:
        raise FileExistsError(
            f"{path} already exists; pass overwrite=True to replace it (it holds {what})"
        )
    _refuse_foreign_entries(path, local, kind)


def _foreign_entries(path, local, kind):
    """Entries inside the pipeline ``kind`` at ``path`` that are not part of it."""
    owned = _OWNED.get(kind)
    if owned is None:
        return []
    if local is None:  # a URL: what its prefix lists
        fs, p = url_fs(path)
        if not fs.isdir(p):
            return []
        names = {str(e).rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(p, detail=False)}
        return sorted(n for n in names if n not in owned)
    if not local.is_dir():
        return []
    return sorted(p.name for p in local.iterdir() if p.name not in owned)


def _refuse_foreign_entries(path, local, kind):
    foreign = _foreign_entries(path, local, kind)
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise FileExistsError(
            f"refusing to replace {_kind_words(kind)} at {path}: it also holds {shown}, which "
            f"{'is' if len(foreign) == 1 else 'are'} not part of it; move "
            f"{'it' if len(foreign) == 1 else 'them'} out first"
        )


def _refuse_nesting(path, local, kind):
    """Refuse a pipeline object inside another one (a replace of the outer one would
    take it along)."""
    for parent in local.absolute().parents:
        outer = kind_of(parent)
        if outer is not None:
            raise FileExistsError(
                f"refusing to write {_kind_words(kind)} at {path}: it is inside {parent}, a "
                f"pipeline {outer}; choose a path outside it"
            )


def new_marker(kind, uid=None):
    """The marker dictionary of a new object of ``kind``."""
    return {
        "kind": kind,
        "uid": uid or uuid.uuid4().hex,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }


# ----------------------------------------------------------------------------- renameat2

_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100
try:
    _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    _renameat2.argtypes += [ctypes.c_uint]
except (AttributeError, OSError):  # not glibc >= 2.28, or not Linux
    _renameat2 = None


class _NoRename2(Exception):
    """This kernel or file system cannot rename with flags."""


def _rename2(src, dst, flags):
    if _renameat2 is None:
        raise _NoRename2
    if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        raise _NoRename2
    raise OSError(err, os.strerror(err), str(dst))


# ----------------------------------------------------------------------------- locks


def _try_lock(directory):
    """An fd holding an exclusive lock on ``directory``, or None if another process holds it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def _path_lock(local):
    """Serialise the fallback publish of writers in ``local``'s directory (a lock on it)."""
    fd = os.open(local.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- leftovers


def _leftover_kind(p):
    """The kind a leftover directory was (being) written as, or None if not ours."""
    try:
        claim = json.loads((p / _CLAIM).read_text())
        return claim.get("kind") if isinstance(claim, dict) else None
    except (OSError, ValueError):
        pass
    kind = kind_of(p)
    if kind is None and _PARTIAL in p.name:  # a partial of older code: no claim, no marker
        looks_ours = any((p / f).exists() for f in ("zarr.json", "X.npy", "schema.json"))
        stale = time.time() - p.stat().st_mtime > _LEGACY_AGE
        kind = "legacy" if looks_ours and stale else None
    return kind


def clean_leftovers(local):
    """Remove ``.NAME.partial-*`` / ``.NAME.old-*`` siblings of ``local`` whose
    writer is gone; only our kinds, never a user's file parked by older code.

    Returns
    -------
    list of Path
        What was removed.
    """
    parent = local.parent
    if not parent.is_dir():
        return []
    removed = []
    for p in parent.glob(f".{local.name}.*"):
        rest = p.name[len(local.name) + 1 :]
        if not (rest.startswith(_PARTIAL) or rest.startswith(_OLD)) or not p.is_dir():
            continue
        if p.is_symlink() or _leftover_kind(p) is None:
            continue
        fd = _try_lock(p)
        if fd is None:  # its writer is still at work
            continue
        try:
            shutil.rmtree(p)
            removed.append(p)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


# ----------------------------------------------------------------------------- publishing


def _fsync_dir(path):
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_marker(directory, marker):
    tmp = directory / (MARKER + ".tmp")
    with open(tmp, "w") as f:
        json.dump(marker, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / MARKER)


def _remove_swapped_out(old, kind, local):
    """``old`` holds what was at ``local`` before an exchange: remove it if it is
    ours to replace; else swap it back and refuse."""
    if old.is_dir() and (kind_of(old) == kind or not any(old.iterdir())):
        if not _foreign_entries(old, old, kind):
            shutil.rmtree(old, ignore_errors=True)
            return
    _rename2(old, local, _RENAME_EXCHANGE)
    raise FileExistsError(
        f"refusing to replace {local}: while this {kind} was written, {describe(old)} was put "
        "there; it is left in place"
    )


def _publish(tmp, local, kind, overwrite):
    """Move the finished ``tmp`` to ``local`` in one step (see the module docstring)."""
    try:
        try:
            _rename2(tmp, local, _RENAME_NOREPLACE)
            return
        except FileExistsError:
            if not overwrite:
                raise FileExistsError(
                    f"{local} was created by another writer while this {kind} was written "
                    f"({describe(local)} is there now); pass overwrite=True to replace it"
                ) from None
        check_destination(local, kind, overwrite=True)
        _rename2(tmp, local, _RENAME_EXCHANGE)
        _remove_swapped_out(tmp, kind, local)
    except _NoRename2:
        _publish_plain(tmp, local, kind, overwrite)


def _publish_plain(tmp, local, kind, overwrite):
    """The same as :func:`_publish` with plain renames, under a lock file."""
    with _path_lock(local):
        check_destination(local, kind, overwrite=overwrite)
        old = None
        if local.exists():
            old = local.with_name(f".{local.name}{_OLD}{uuid.uuid4().hex[:8]}")
            os.rename(local, old)
        os.rename(tmp, local)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _settle_background_writes(timeout=10.0):
    """Wait for zarr's writes still in flight after an interrupted call.

    Zarr runs its I/O on an event loop in its own thread; a Ctrl-C in the thread
    waiting for it leaves those writes going, and they would re-create files in a
    partial directory just removed.
    """
    try:
        from zarr.core import sync as zarr_sync

        loop = zarr_sync.loop[0]
    except (ImportError, AttributeError, IndexError):
        return
    if loop is None or not loop.is_running():
        return

    async def drain():
        me = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not me]
        await asyncio.gather(*pending, return_exceptions=True)

    with contextlib.suppress(Exception):
        asyncio.run_coroutine_threadsafe(drain(), loop).result(timeout)


_GUARD = contextvars.ContextVar("pipeline_publish_guard", default=None)


@contextlib.contextmanager
def publish_guard(check):
    """Within this context, call ``check()`` just before any object is published;
    it raises to abandon the write (the CLI's: a Ctrl-C that a library swallowed)."""
    token = _GUARD.set(check)
    try:
        yield
    finally:
        _GUARD.reset(token)


@contextlib.contextmanager
def atomic_dir(path, kind, *, overwrite=False, uid=None):
    """Write a pipeline object of ``kind`` to ``path`` atomically.

    Parameters
    ----------
    path : str or os.PathLike
        The destination, checked at once (:func:`check_destination`).
    kind : {"store", "model", "checkpoint", "pipeline", "cache"}
    overwrite : bool
        Replace an existing object of the same kind.
    uid : str, optional
        The new object's identity, kept in its marker; a new one by default.

    Yields
    ------
    str
        Where to write: a local directory (a hidden sibling of ``path``) or, for a
        non-local URL, ``path`` itself. On normal exit the marker is written and the
        object published; on an exception it is removed and ``path`` is untouched.
    """
    check_destination(path, kind, overwrite=overwrite)
    marker = new_marker(kind, uid)
    local = local_path(path)
    if local is None:
        yield from _remote(path, kind, overwrite, marker)
        return
    local.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(local)
    tmp = local.with_name(f".{local.name}{_PARTIAL}{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    fd = _try_lock(tmp)
    try:
        (tmp / _CLAIM).write_text(json.dumps({"kind": kind, "pid": os.getpid()}))
        yield str(tmp)
        if _GUARD.get() is not None:
            _GUARD.get()()
        (tmp / _CLAIM).unlink()
        _write_marker(tmp, marker)
        _fsync_dir(tmp)
        _publish(tmp, local, kind, overwrite)
        _fsync_dir(local.parent)
    except BaseException:
        _settle_background_writes()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if fd is not None:
            os.close(fd)


def _remote(path, kind, overwrite, marker):
    """Write in place at a URL (object stores have no rename), under a claim.

    The claim names this write; a second writer's claim replaces it, so each
    writer checks before publishing that the claim is still its own, and only
    the claim's owner removes what it wrote. Readers still catch chunks mixed by
    two writers through the per-chunk checksums and the uid.
    """
    fs, p = url_fs(path)
    root = p.rstrip("/")
    if overwrite and fs.exists(p):
        fs.rm(p, recursive=True)
    claim = json.dumps({"kind": kind, "uid": marker["uid"]}).encode()
    fs.pipe_file(f"{root}/{_CLAIM}", claim)

    def ours():
        try:
            return fs.cat_file(f"{root}/{_CLAIM}") == claim
        except FileNotFoundError:
            return False

    try:
        yield path
        if not ours():
            raise FileExistsError(
                f"{path}: another writer wrote to this URL at the same time; what is there "
                "now is theirs (reads check its chunks), nothing of this write was published"
            )
        if _GUARD.get() is not None:
            _GUARD.get()()
        fs.pipe_file(f"{root}/{MARKER}", json.dumps(marker).encode())
        fs.rm_file(f"{root}/{_CLAIM}")
    except BaseException:
        with contextlib.suppress(Exception):
            if ours():
                fs.rm(p, recursive=True)
        raise
