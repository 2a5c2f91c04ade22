"""The autoencoder as a scikit-learn transformer and outlier scorer.

Trained to reconstruct its input (``y`` is ignored), streamed from stores as every
network here. ``transform`` gives the code, ``inverse_transform`` decodes it, and
``score_samples`` follows scikit-learn's outlier-detector convention: higher is
more normal (minus the reconstruction error), so it ranks anomalies directly.
"""

from __future__ import annotations

from numbers import Integral, Real

import dask.array as da
import numpy as np
from sklearn.base import ClassNamePrefixFeaturesOutMixin, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import _check_sample_weight, check_array, check_is_fitted

from pipeline import nn
from pipeline._adapter import as_dask as as_streamed
from pipeline._adapter import is_streamed, returns_lazy
from pipeline._engine import _Data
from pipeline._heads import TRAINING_DOC, stochastic, with_parameters
from pipeline._netio import check_known_chunks
from pipeline._networks import _LAYER_CONSTRAINTS, Network, _sizes
from pipeline._targets import target_table

__all__ = ["AutoEncoder"]


@with_parameters(
    "hidden_layer_sizes",
    hidden_layer_sizes=(128,),
    code_size=32,
    activation="relu",
    dropout=0.0,
    batch_norm=False,
    denoising=0.0,
)
class AutoEncoder(ClassNamePrefixFeaturesOutMixin, TransformerMixin, Network):
    __doc__ = (
        """Autoencoder: an MLP encoder to a linear code, a mirrored decoder, squared error.

    For feature learning and dimensionality reduction (``transform``), and for
    anomaly detection (``score_samples``: minus each sample's mean squared
    reconstruction error, higher = more normal). Fits with ``y=None`` on numpy,
    dask, zarr, memmaps and stores, streamed chunk by chunk.

    Parameters
    ----------
    hidden_layer_sizes : sequence of int, default=(128,)
        Hidden units of the encoder, outermost first; the decoder mirrors them.
    code_size : int, default=32
        Units of the code (``transform``'s output).
"""
        + """    activation : str, default='relu'
    dropout : float, default=0.0
    batch_norm : bool, default=False
        As the MLP's, for encoder and decoder.
    denoising : float, default=0.0
        Fraction of input values set to zero while training (a denoising
        autoencoder learns to restore them).
"""
        + TRAINING_DOC
        + """
    Attributes
    ----------
    module_ : pipeline.nn.AutoEncoderNet
        The trained network (``encoder`` and ``decoder`` MLPs).
    loss_, loss_curve_, best_loss_, validation_scores_, best_validation_score_,
    n_iter_, t_, n_features_in_, feature_names_in_ : as MLPRegressor's
        (validation scores are :meth:`score`: minus the mean squared error).
"""
    )

    _parameter_constraints = {
        **Network._parameter_constraints,
        **_LAYER_CONSTRAINTS,
        "hidden_layer_sizes": ["array-like", Interval(Integral, 0, None, closed="left")],
        "code_size": [Interval(Integral, 1, None, closed="left")],
        "denoising": [Interval(Real, 0, 1, closed="left")],
    }
    _target_kind = "reconstruction"

    def _model(self, feature_shape, n_outputs):
        return nn.AutoEncoderNet, dict(
            n_features=int(feature_shape[0]),
            hidden=_sizes(self.hidden_layer_sizes, "hidden_layer_sizes"),
            code_size=int(self.code_size),
            activation=self.activation,
            dropout=float(self.dropout),
            batch_norm=bool(self.batch_norm),
            denoising=float(self.denoising),
        )

    def _out_activation(self):
        return "reconstruct"

    @property
    def _n_features_out(self):
        return self.code_size

    # ------------------------------------------------------------------ fitting

    def _validate_training(self, X, y, sample_weight, *, reset, classes=None):
        """X validated; the target table holds only the sample weights."""
        X = self._validate_X(X, reset)
        self._kind = "reconstruction"
        Y = self._weights(X, sample_weight, self._data_dtype(X) if reset else self._dtype)
        return _Data(X, Y, int(X.shape[0]), isinstance(X, da.Array))

    def _weights(self, X, sample_weight, dtype):
        """The target table of validated X: its sample weights alone."""
        if isinstance(X, da.Array):
            rows = da.zeros(X.shape[0], chunks=(X.chunks[0],))
            if sample_weight is not None:
                sample_weight = self._streamed_like(X, sample_weight, "sample_weight")
        else:
            rows = np.zeros(len(X))
            if sample_weight is not None:
                sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float32)
        return target_table(rows, sample_weight, "reconstruction", dtype=dtype)

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, sample_weight=None):
        """Learn to reconstruct X of shape (n_samples, n_features); ``y`` is ignored.

        Returns
        -------
        self
        """
        return self._fit(X, None, sample_weight)

    @available_if(stochastic)
    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None, sample_weight=None):
        """One pass over X, continuing from the current state; ``y`` is ignored."""
        return self._fit(X, None, sample_weight, incremental=True)

    # ---------------------------------------------------------------- inference

    def transform(self, X):
        """The code of X: shape (n_samples, code_size); lazy for dask X."""
        return self._outputs(X, method="encode", n_outputs=self.code_size)

    def inverse_transform(self, X):
        """Reconstructions of codes X of shape (n_samples, code_size): (n_samples,
        n_features); lazy for dask X."""
        check_is_fitted(self)
        lazy_in = returns_lazy(X)
        if is_streamed(X):
            X = self._codes_streamed(X)
        else:
            X = check_array(X, dtype=(np.float64, np.float32))
        if X.ndim != 2 or X.shape[1] != self.code_size:
            raise ValueError(
                f"inverse_transform takes codes of shape (n_samples, {self.code_size}), "
                f"got shape {X.shape}"
            )
        predictor = self._predictor(method="decode", n_outputs=self.n_features_in_)
        return self._apply(predictor, X, lazy_in)

    def _codes_streamed(self, X):
        X = as_streamed(X)
        check_known_chunks(X, "X")
        return X.rechunk({1: -1}) if X.ndim == 2 else X

    def reconstruct(self, X):
        """``inverse_transform(transform(X))`` in one pass: (n_samples, n_features)."""
        return self._outputs(X)

    def score_samples(self, X):
        """Minus the mean squared reconstruction error of each sample: (n_samples,).

        scikit-learn's outlier-detector convention: the lower, the more abnormal.
        Lazy for dask X.
        """
        errors = self._outputs(X, method="errors", n_outputs=1)
        return -errors[:, 0]

    def score(self, X, y=None, sample_weight=None):
        """Minus the mean squared reconstruction error over X (weighted); streamed
        for dask/zarr X."""
        if not is_streamed(X):
            scores = self.score_samples(X)
            if sample_weight is not None:
                sample_weight = _check_sample_weight(sample_weight, scores, dtype=np.float64)
            return float(np.average(scores, weights=sample_weight))
        check_is_fitted(self)
        X = self._validate_X(X, reset=False)
        with self._precision():
            return self._streamed_score(X, self._weights(X, sample_weight, self._dtype), True)
