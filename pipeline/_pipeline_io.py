"""A :class:`pipeline.Pipeline` saved as one Zarr group: JSON, arrays and skops, never pickle.

The group (a pipeline directory, written with :func:`pipeline._atomic.atomic_dir`)
holds the Pipeline's own parameters and one entry per step under ``steps/<i>``:

- our networks: their model group, exactly as ``est.save`` writes it;
- a nested :class:`pipeline.Pipeline`: its own pipeline group;
- scikit-learn and dask-ml steps: the bytes of ``skops.io.dumps`` (a uint8 array);
- ``"passthrough"`` and None: recorded in the metadata only.

The metadata (written last) carries a checksum and, for every stored step, a
digest of it (the model's own metadata checksum, the SHA-256 of the skops bytes),
so a hand edit, or a step copied in from another file, is refused. A skops step
is only built when every type it needs is trusted by skops already or is one of
dask-ml's estimators; anything else is named and refused. :func:`save_pipeline`
refuses the same steps before writing anything.

Unfitted (or partly fitted) pipelines are saved as they are: every step's
format holds an unfitted step. ``memory`` is refused, not stored: it names a
cache directory that a file from elsewhere must not choose for you.
"""

from __future__ import annotations

import functools
import hashlib
import importlib

import dask.array as da
import numpy as np
import skops.io as sio
import zarr
from sklearn.base import BaseEstimator

from pipeline import checkpoint
from pipeline._atomic import MARKER, atomic_dir, check_destination, describe, kind_of, local_path
from pipeline._pipeline import Pipeline
from pipeline._schema import verify_checksum, with_checksum

__all__ = ["load_pipeline", "save_pipeline"]

FORMAT = "pipeline-pipeline"
FORMAT_VERSION = 1
_STEPS = "steps"
_ENTRIES = {"zarr.json", _STEPS, MARKER}  # what a pipeline directory is made of
_PARAMS = ("verbose", "max_in_memory", "transform_input")
_KINDS = ("model", "pipeline", "skops", "passthrough", "none")
# dask-ml modules whose estimators hold plain numpy state that skops can rebuild
_DASK_ML = (
    "preprocessing",
    "decomposition",
    "impute",
    "linear_model",
    "cluster",
    "naive_bayes",
    "compose",
    "feature_extraction.text",
)


# ----------------------------------------------------------------------------- trust


@functools.cache
def _dask_ml_types():
    """``module.name`` of dask-ml's estimator classes: the types trusted beyond skops'."""
    names = set()
    for sub in _DASK_ML:
        for obj in vars(importlib.import_module(f"dask_ml.{sub}")).values():
            if isinstance(obj, type) and issubclass(obj, BaseEstimator):
                if obj.__module__.startswith("dask_ml."):
                    names.add(f"{obj.__module__}.{obj.__name__}")
    return frozenset(names)


def _untrusted(blob):
    """The types in skops bytes that neither skops nor we trust, sorted."""
    found = sio.get_untrusted_types(data=blob)
    return sorted(set(found) - _dask_ml_types()) if found else []


def _untrusted_reason(names):
    return (
        f"it needs {', '.join(names)}, which pipeline does not trust: building it could run "
        "code that is not scikit-learn's, dask-ml's, numpy's or scipy's (a function of "
        "yours, a lambda), or crash on crafted data (tree models' raw node indices)"
    )


# ----------------------------------------------------------------------------- saving


def save_pipeline(pipe, path, *, overwrite=False):
    """Write ``pipe`` (fitted or not) to a Zarr group at ``path``; nothing is pickled.

    Every step is checked first: a step that cannot be stored safely fails here,
    named, before anything is written. The group appears complete or not at all
    (local paths); ``overwrite=True`` replaces only a pipeline.

    Raises
    ------
    TypeError
        ``pipe`` is not a :class:`pipeline.Pipeline`.
    ValueError
        ``memory`` is set, or a step cannot be stored (each one named, with why).
    FileExistsError
        Something is at ``path`` that may not be replaced.
    """
    plan = _plan(pipe)
    check_destination(path, "pipeline", overwrite=overwrite)
    if overwrite:
        _refuse_foreign_entries(path)
    with atomic_dir(path, "pipeline", overwrite=overwrite) as location:
        _write(plan, location)


def _plan(pipe):
    """``(params, [(name, kind, payload)])`` for ``pipe``; every problem raised at once."""
    if not isinstance(pipe, Pipeline):
        raise TypeError(
            f"save_pipeline saves a pipeline.Pipeline, got {type(pipe).__name__}; "
            "wrap scikit-learn's as pipeline.Pipeline(its.steps)"
        )
    if pipe.memory is not None:
        raise ValueError(
            f"cannot save a Pipeline with memory={pipe.memory!r}: a saved pipeline does not "
            "name a cache directory to write to; set_params(memory=None) first"
        )
    params = checkpoint._to_json({k: getattr(pipe, k) for k in _PARAMS})
    planned, problems = [], []
    for name, step in pipe.steps:
        try:
            planned.append((name, *_plan_step(step)))
        except ValueError as exc:
            problems.append(f"step {name!r} ({type(step).__name__}): {exc}")
    if problems:
        listed = "\n- ".join(problems)
        raise ValueError(f"cannot save this Pipeline; nothing was written:\n- {listed}")
    return params, planned


def _plan_step(step):
    """``(kind, payload)`` of one step, or ``ValueError`` saying why it cannot be stored."""
    if step is None or (isinstance(step, str) and step == "passthrough"):
        return ("none" if step is None else "passthrough"), None
    if isinstance(step, Pipeline):
        return "pipeline", _plan(step)
    if hasattr(step, "save") and hasattr(step, "__pipeline_tags__"):
        if checkpoint._registry().get(type(step).__name__) is not type(step):
            raise ValueError("it is not one of pipeline's estimators that a model file holds")
        try:
            checkpoint._params_json(step)
        except TypeError as exc:
            raise ValueError(str(exc)) from None
        return "model", step
    lazy = sorted(k for k, v in getattr(step, "__dict__", {}).items() if isinstance(v, da.Array))
    if lazy:
        raise ValueError(
            f"its fitted {', '.join(lazy)} {'is' if len(lazy) == 1 else 'are'} lazy (a dask "
            "array; dask-ml leaves some lazy), which skops cannot store"
        )
    try:
        blob = sio.dumps(step)
    except Exception as exc:  # noqa: BLE001 - skops raises many kinds; name it for the user
        raise ValueError(f"skops cannot store it ({type(exc).__name__}: {exc})") from None
    untrusted = _untrusted(blob)
    if untrusted:
        raise ValueError(_untrusted_reason(untrusted))
    return "skops", blob


def _refuse_foreign_entries(path):
    """Refuse to replace a pipeline directory that also holds files of someone else's."""
    local = local_path(path)
    if local is None or kind_of(path) != "pipeline":
        return
    foreign = [p.name for p in local.iterdir() if p.name not in _ENTRIES]
    if (local / _STEPS).is_dir():
        foreign += [
            f"{_STEPS}/{p.name}"
            for p in (local / _STEPS).iterdir()
            if p.name != "zarr.json" and not p.name.isdigit()
        ]
    if foreign:
        raise FileExistsError(
            f"refusing to replace the pipeline at {path}: it also holds "
            f"{', '.join(sorted(foreign))}, which is not part of it; move it out first"
        )


def _write(plan, location):
    """Write a planned pipeline into the new group at ``location``; return its checksum."""
    params, planned = plan
    root = zarr.open_group(location, mode="a", zarr_format=3)
    steps = root.create_group(_STEPS)
    entries = []
    for i, (name, kind, payload) in enumerate(planned):
        entry = {"name": name, "kind": kind}
        where = f"{location}/{_STEPS}/{i}"
        if kind == "model":
            checkpoint._write_group(payload, where)
            entry["class"] = type(payload).__name__
            entry["digest"] = zarr.open_group(where, mode="r").attrs[checkpoint.FORMAT]["checksum"]
        elif kind == "pipeline":
            entry["digest"] = _write(payload, where)
        elif kind == "skops":
            checkpoint._write_array(steps, str(i), np.frombuffer(payload, dtype=np.uint8))
            entry["digest"] = hashlib.sha256(payload).hexdigest()
        entries.append(entry)
    meta = with_checksum({"format_version": FORMAT_VERSION, "params": params, "steps": entries})
    root.attrs.update({FORMAT: meta})  # written last: a group without it is no pipeline
    return meta["checksum"]


# ----------------------------------------------------------------------------- loading


def load_pipeline(path, **params):
    """Read a Pipeline written by :func:`save_pipeline` (``pipeline.load`` calls it).

    Parameters
    ----------
    path : str or os.PathLike
        A local directory or an fsspec URL.
    **params
        ``<step>__module=``: the code of a ``NeuralNetClassifier`` step, which the
        file names but never stores (see :func:`pipeline.load`).

    Returns
    -------
    pipeline.Pipeline
        With the saved parameters and steps; it predicts exactly as the saved one.
    """
    kind = kind_of(path)
    if kind != "pipeline":
        raise ValueError(f"{path} is not a saved pipeline.Pipeline: it holds {describe(path)}")
    try:
        group = zarr.open_group(str(local_path(path) or path), mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError, KeyError) as exc:
        raise ValueError(f"{path} is not a readable pipeline: {exc}") from exc
    return _read(group, str(path), params)


def _read(group, where, params):
    meta = group.attrs.get(FORMAT)
    if not isinstance(meta, dict):
        raise ValueError(f"{where} is not a saved pipeline (no {FORMAT!r} attributes)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{where} has pipeline format version {meta.get('format_version')!r}; "
            f"this pipeline reads version {FORMAT_VERSION}"
        )
    verify_checksum(meta, where, "pipeline", required=True)
    _check_layout(meta, where)
    entries = meta["steps"]
    given = _route(params, [e["name"] for e in entries], where)
    try:
        steps = [
            (e["name"], _read_step(group, f"{where}/{_STEPS}/{i}", i, e, given[e["name"]]))
            for i, e in enumerate(entries)
        ]
    except KeyError as exc:  # zarr: a step's group or array is missing
        raise ValueError(
            f"{where} is not a readable pipeline: {exc} is missing (the file is damaged)"
        ) from exc
    own = {k: checkpoint._from_json(meta["params"][k]) for k in _PARAMS}
    return Pipeline(steps, **own)


def _check_layout(meta, where):
    """Refuse metadata of another shape (another version's, or corrupt past its checksum)."""
    steps, params = meta.get("steps"), meta.get("params")
    fine = (
        isinstance(steps, list)
        and isinstance(params, dict)
        and set(_PARAMS) <= set(params)
        and all(
            isinstance(e, dict)
            and isinstance(e.get("name"), str)
            and e.get("kind") in _KINDS
            and (e["kind"] in ("none", "passthrough") or isinstance(e.get("digest"), str))
            for e in steps
        )
    )
    if not fine:
        raise ValueError(
            f"{where} is not a readable pipeline: its metadata is not laid out as this version "
            "writes it (corrupt, or from another version)"
        )


def _route(params, names, where):
    """``{step name: its load parameters}`` from ``<step>__<param>`` keywords."""
    routed = {name: {} for name in names}
    for key, value in params.items():
        name, sep, rest = key.partition("__")
        if not sep or name not in routed:
            raise TypeError(
                f"load() got an unexpected keyword argument {key!r}: {where} is a Pipeline of "
                f"steps {', '.join(map(repr, names))}; give a step's code as <step>__module="
            )
        routed[name][rest] = value
    return routed


def _read_step(group, where, i, entry, given):
    kind, name = entry["kind"], entry["name"]
    if given and kind not in ("model", "pipeline"):
        raise TypeError(
            f"load() cannot set {', '.join(given)} of step {name!r}: it is stored whole"
        )
    if kind in ("none", "passthrough"):
        return None if kind == "none" else "passthrough"
    node = group[_STEPS][str(i)]
    if kind == "pipeline":
        meta = node.attrs.get(FORMAT)
        _check_digest(meta.get("checksum") if isinstance(meta, dict) else None, entry, where)
        return _read(node, where, given)
    if kind == "model":
        meta = node.attrs.get(checkpoint.FORMAT)
        if not isinstance(meta, dict):
            raise ValueError(f"step {name!r} at {where} is not a pipeline model")
        verify_checksum(meta, where, "model", required=True)
        _check_digest(meta["checksum"], entry, where)
        _check_code(meta, name, given)
        return checkpoint.load(where, **given)
    return _read_skops(group[_STEPS], str(i), entry, where)


def _check_digest(digest, entry, where):
    if digest is None or digest != entry["digest"]:
        raise ValueError(
            f"step {entry['name']!r} at {where} is not the one this pipeline saved (its digest "
            "differs: replaced, edited or damaged); save the pipeline again"
        )


def _check_code(meta, name, given):
    """Name the code a network step was built from, unless given back as ``<step>__<param>``."""
    code = {
        k: v[checkpoint._CODE]
        for k, v in meta.get("params", {}).items()
        if isinstance(v, dict) and set(v) == {checkpoint._CODE} and k not in given
    }
    if code:
        args = ", ".join(f"{name}__{k}=<{c}>" for k, c in code.items())
        raise ValueError(
            f"step {name!r} was built from your code, which a pipeline file does not store: "
            f"pass it back, as pipeline.load(path, {args})"
        )


def _read_skops(steps, key, entry, where):
    arr = steps[key]
    if not isinstance(arr, zarr.Array) or arr.dtype != np.uint8 or arr.ndim != 1:
        raise ValueError(f"step {entry['name']!r} at {where} is not an array of skops bytes")
    blob = checkpoint._read_array(steps, key).tobytes()
    if hashlib.sha256(blob).hexdigest() != entry["digest"]:
        _check_digest(None, entry, where)
    untrusted = _untrusted(blob)
    if untrusted:
        raise ValueError(f"refusing to load step {entry['name']!r} of {where.rsplit('/', 2)[0]}: "
                         + _untrusted_reason(untrusted))
    trusted = sorted(set(sio.get_untrusted_types(data=blob)))  # all dask-ml's, checked above
    return sio.loads(blob, trusted=trusted or None)
