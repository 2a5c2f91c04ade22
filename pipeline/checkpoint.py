"""Models and their training state as Zarr groups: arrays plus JSON, never pickle.

``est.save(path)`` writes a group whose attributes hold the estimator's class
name, its parameters and scalar fitted attributes (JSON), and whose arrays hold
the network parameters, batch-norm statistics, optimizer state and RNG key.
:func:`load` rebuilds the estimator from a fixed registry of our classes and
plain data, so opening a model file from elsewhere cannot run code. A loaded
model predicts identically and continues training (``partial_fit``,
``warm_start``) exactly where the saved one would.
"""

from __future__ import annotations

import inspect
import math

import jax
import numpy as np
import zarr
from sklearn.base import is_classifier

from pipeline import nn
from pipeline._atomic import (
    atomic_dir,
    check_destination,
    describe,
    kind_of,
    local_path,
    read_marker,
)
from pipeline._schema import verify_checksum, with_checksum

__all__ = ["load", "save"]

FORMAT = "pipeline-model"
FORMAT_VERSION = 1
_SCALARS = (
    "n_features_in_",
    "n_outputs_",
    "n_layers_",
    "out_activation_",
    "n_iter_",
    "t_",
    "loss_",
    "loss_curve_",
    "best_loss_",
    "validation_scores_",
    "best_validation_score_",
    "_no_improvement_count",
    "_seed",
    "_epochs_seen",
    "_dtype",
    "_kind",
    "_feature_shape",
    "categorical_columns_",
    "crosses_",
    "categories_",
)
_CODE = "code"  # a parameter that is Python code (your own module): named, never stored


def _registry():
    from pipeline import estimators

    return {name: getattr(estimators, name) for name in estimators.__all__}


def _to_json(value):
    """Plain JSON: numpy scalars to Python, non-finite floats to strings, tuples to lists."""
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _to_json(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": repr(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot save {type(value).__name__} value {value!r} as JSON")


def _from_json(value):
    if isinstance(value, dict) and set(value) == {"float"}:
        return float(value["float"])
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _code_name(obj):
    """``module.qualname`` of a class or function, or of an instance's class."""
    kind = obj if isinstance(obj, type) or inspect.isroutine(obj) else type(obj)
    return f"{getattr(kind, '__module__', '?')}.{getattr(kind, '__qualname__', repr(kind))}"


def _params_json(est):
    params = est.get_params(deep=False)
    if not (params.get("random_state") is None or isinstance(params["random_state"], int)):
        params["random_state"] = None  # a RandomState object is not data; it was consumed
    if params.get("module") is not None:
        params["module"] = {_CODE: _code_name(params["module"])}
    return _to_json(params)


def _write_array(group, name, data):
    data = np.asarray(data)
    codec = zarr.codecs.ZstdCodec(level=1, checksum=True)  # corruption fails to decode
    group.create_array(name, data=data, compressors=codec, config={"write_empty_chunks": True})


def _read_array(group, name, shape=None):
    """An array of the model group, refusing missing chunks (zarr would fill them in)."""
    arr = group[name]
    if arr.nchunks_initialized != arr.nchunks:
        raise ValueError(
            f"array {name!r} is missing {arr.nchunks - arr.nchunks_initialized} of "
            f"its {arr.nchunks} chunks"
        )
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise ValueError(f"array {name!r} has shape {arr.shape}, the model needs {shape}")
    return arr[...]


def _write_tree(group, name, tree):
    leaves = jax.tree_util.tree_leaves(tree)
    for i, leaf in enumerate(leaves):
        _write_array(group, f"{name}/{i}", leaf)
    return len(leaves)


def _read_tree(group, name, count, template):
    treedef = jax.tree_util.tree_structure(template)
    if treedef.num_leaves != count:
        raise ValueError(
            f"it holds {count} arrays for {name!r}, the model needs {treedef.num_leaves}"
        )
    shapes = [np.shape(leaf) for leaf in jax.tree_util.tree_leaves(template)]
    leaves = [_read_array(group, f"{name}/{i}", shape) for i, shape in enumerate(shapes)]
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _write_group(est, location):
    group = zarr.open_group(location, mode="a", zarr_format=3)  # a new, empty directory
    fitted = {k: _to_json(getattr(est, k)) for k in _SCALARS if hasattr(est, k)}
    counts = {}
    if hasattr(est, "_config"):
        counts["params"] = _write_tree(group, "params", est._import_params())
        counts["state"] = _write_tree(group, "state", est._state)
        if hasattr(est, "_opt_state"):
            counts["opt_state"] = _write_tree(group, "opt_state", est._opt_state)
            fitted["_opt_spec"] = _to_json(est._opt_spec)
        _write_array(group, "key", est._key)
    if hasattr(est, "classes_"):
        classes = np.asarray(est.classes_)
        if classes.dtype.kind in "biuf":
            _write_array(group, "classes", classes)
        else:  # labels as JSON: zarr's string arrays are not yet a stable format
            fitted["classes_"] = _to_json(classes)
    if hasattr(est, "feature_names_in_"):
        fitted["feature_names_in_"] = [str(f) for f in est.feature_names_in_]
    group.attrs.update(
        {
            FORMAT: with_checksum(  # written last: a group without it is not a model
                {
                    "format_version": FORMAT_VERSION,
                    "class": type(est).__name__,
                    "params": _params_json(est),
                    "fitted": fitted,
                    "arrays": counts,
                }
            )
        }
    )


def save(est, path, *, overwrite=False):
    """Write estimator ``est`` (fitted or not) to a Zarr group at ``path``.

    The group appears complete or not at all for local paths (written next to
    it, then swapped into place); ``overwrite=True`` replaces only a model, never
    a store, a checkpoint or a directory of other files.
    """
    if type(est).__name__ not in _registry():
        raise TypeError(f"save supports pipeline's estimators, got {type(est).__name__}")
    with atomic_dir(path, "model", overwrite=overwrite) as location:
        _write_group(est, location)


def check_save_destination(path, *, overwrite=False):
    """Refuse a model destination before training: what ``save`` would refuse."""
    check_destination(path, "model", overwrite=overwrite)


def _open_model_group(path):
    local = local_path(path)
    if local is not None and not local.exists():
        raise FileNotFoundError(f"no model at {path}")
    if local is not None and not local.is_dir():
        raise ValueError(f"{path} is not a pipeline model: it is a file, not a directory")
    kind = kind_of(path)
    if kind is None and local is not None and not (local / "zarr.json").exists():
        raise ValueError(f"{path} is not a pipeline model: it holds {describe(path)}")
    if kind not in (None, "model"):
        hint = {
            "store": " (open it with pipeline.store.open)",
            "checkpoint": f" of parallel.fit; its model is {str(path).rstrip('/')}/model",
        }
        raise ValueError(
            f"{path} is not a pipeline model: it holds a pipeline {kind}{hint.get(kind, '')}"
        )
    try:
        group = zarr.open_group(str(local) if local is not None else path, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
        raise FileNotFoundError(f"no model at {path}: {exc}") from None
    except (ValueError, KeyError, TypeError) as exc:  # unreadable metadata (JSONDecodeError)
        raise ValueError(f"{path} is not a readable pipeline model: {exc}") from exc
    meta = group.attrs.get(FORMAT)
    if not isinstance(meta, dict):
        raise ValueError(
            f"{path} is not a pipeline model (no {FORMAT!r} attributes); "
            "an interrupted save leaves none"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has model format version {meta.get('format_version')!r}; "
            f"this pipeline reads version {FORMAT_VERSION}"
        )
    verify_checksum(meta, path, "model", required=read_marker(path) is not None)
    return group, meta


def load(path, **params):
    """Read an estimator written by ``est.save(path)``, or a Pipeline written by
    ``Pipeline.save(path)``; nothing is unpickled.

    Parameters
    ----------
    path : str or os.PathLike
        A local directory or an fsspec URL.
    **params
        Constructor parameters to give back that a model file cannot hold: the
        ``module`` of a ``NeuralNetClassifier`` / ``NeuralNetRegressor`` (your
        code, which the file names but never stores). Its arrays must fit the saved
        weights. For a Pipeline, ``<step>__module=``.

    Returns
    -------
    estimator
        Of the saved class, with the saved parameters and fitted state.
    """
    if kind_of(path) == "pipeline":
        from pipeline._pipeline_io import load_pipeline  # imports the Pipeline only when needed

        return load_pipeline(path, **params)
    group, meta = _open_model_group(path)
    classes = _registry()
    if meta.get("class") not in classes:
        raise ValueError(f"{path} holds an unknown model class {meta.get('class')!r}")
    cls = classes[meta["class"]]
    saved = meta.get("params", {})
    code = {k: v[_CODE] for k, v in saved.items() if isinstance(v, dict) and set(v) == {_CODE}}
    _check_given(cls, code, params, path)
    missing = {k: name for k, name in code.items() if k not in params}
    if missing:
        given = ", ".join(f"{k}=<{name}>" for k, name in missing.items())
        raise ValueError(
            f"{path} was built from your code, which a model file does not store: pass it "
            f"back, as pipeline.load({str(path)!r}, {given})"
        )
    try:
        return _restore(cls, group, meta, params)
    except (KeyError, ValueError, TypeError, AttributeError, RuntimeError) as exc:
        if params:  # the code given back builds other arrays than the saved ones
            given = ", ".join(f"{k}={_code_name(v)}" for k, v in params.items())
            raise ValueError(
                f"the code you passed ({given}) does not fit the model saved in {path}, built "
                f"from {', '.join(code.values())}: {exc}"
            ) from exc
        raise ValueError(
            f"{path} is not a readable pipeline model: {exc} (the file is corrupt, edited or "
            "from another version)"
        ) from exc


def _check_given(cls, code, params, path):
    """Refuse keyword arguments of :func:`load` that are the caller's mistake."""
    accepted = cls().get_params(deep=False)
    for k in params:
        if k not in accepted:
            raise TypeError(
                f"load() got an unexpected keyword argument {k!r}: {cls.__name__} has no such "
                "parameter"
            )
        if k not in code:
            takes = ", ".join(f"{c}=" for c in code) or "nothing"
            raise TypeError(
                f"load() cannot set {k}=: {path} stores {cls.__name__}'s {k}. load takes back "
                f"only the code a model file names but cannot store (here: {takes}); set other "
                "parameters on the loaded model with set_params"
            )


def _check_class(cls, group, meta):
    """A classifier's file holds its classes, a regressor's none: an edited class
    name (in a file without a checksum) must not turn one into the other."""
    if "n_features_in_" not in meta["fitted"]:
        return  # unfitted: nothing to contradict
    has_classes = "classes_" in meta["fitted"] or "classes" in group
    if is_classifier(cls()) != has_classes:
        holds = "a classifier's classes" if has_classes else "no classes"
        raise ValueError(f"it names class {cls.__name__}, but holds {holds}")


def _restore(cls, group, meta, given):
    _check_class(cls, group, meta)
    params = {k: _tuples(_from_json(v)) for k, v in meta["params"].items()}
    est = cls(**{**params, **given})
    for k, v in meta["fitted"].items():
        if k == "categories_":
            est.categories_ = [np.asarray(c) for c in _from_json(v)]
        elif k in ("categorical_columns_", "crosses_"):
            setattr(est, k, _tuples(_from_json(v)))
        elif k not in ("_opt_spec", "classes_", "feature_names_in_"):
            setattr(est, k, _from_json(v))
    if "feature_names_in_" in meta["fitted"]:
        est.feature_names_in_ = np.asarray(meta["fitted"]["feature_names_in_"], dtype=object)
    if "classes_" in meta["fitted"]:
        est.classes_ = np.asarray(_from_json(meta["fitted"]["classes_"]))
    elif "classes" in group:
        est.classes_ = _read_array(group, "classes")
    if "params" in meta["arrays"]:
        _restore_arrays(est, group, meta)
    return est


def _restore_arrays(est, group, meta):
    counts = meta["arrays"]
    est._feature_shape = tuple(getattr(est, "_feature_shape", (est.n_features_in_,)))
    if est._feature_shape[0] != est.n_features_in_:
        raise ValueError(
            f"n_features_in_={est.n_features_in_} disagrees with the sample shape "
            f"{est._feature_shape}"
        )
    est._config = est._model_config(est._feature_shape, est.n_outputs_)
    with jax.enable_x64(est._dtype == "float64"):
        template = nn.model_shapes(*est._config)[0]
        params = _read_tree(group, "params", counts["params"], template)
        est._export_params(params)
        est._state = _read_tree(group, "state", counts["state"], nn.initial_state(template))
        if "opt_state" in counts:
            est._opt_spec = _tuples(_from_json(meta["fitted"]["_opt_spec"]))
            opt_template = jax.eval_shape(nn.compiled_init(*est._opt_spec), template)
            est._opt_state = _read_tree(group, "opt_state", counts["opt_state"], opt_template)
    est._key = _read_array(group, "key", (2,))
