"""Reports of a fitted search: a table of candidates, score boxplots, the graph drawn."""

from __future__ import annotations

import numpy as np
from dask.core import get_dependencies
from sklearn.utils.validation import check_is_fitted

__all__ = ["ReportMixin", "draw_graph"]


def _metrics(results):
    return [k[len("mean_test_") :] for k in results if k.startswith("mean_test_")]


def _param_names(results):
    return [k[len("param_") :] for k in results if k.startswith("param_")]


def _mean_std(results, kind, metric, digits):
    mean, std = results[f"mean_{kind}_{metric}"], results[f"std_{kind}_{metric}"]
    return [f"{m:.{digits}f} ± {s:.{digits}f}" for m, s in zip(mean, std, strict=True)]


def _split_scores(results, kind, metric):
    """Per-split scores, shape (n_candidates, n_splits)."""
    keys = sorted(
        (k for k in results if k.startswith("split") and k.endswith(f"_{kind}_{metric}")),
        key=lambda k: int(k[len("split") :].split("_")[0]),
    )
    return np.column_stack([results[k] for k in keys])


class ReportMixin:
    """``report()``, ``boxplot_parameters()`` and ``visualize()`` over ``cv_results_``."""

    def _refit_metric(self):
        metrics = _metrics(self.cv_results_)
        return self.refit if isinstance(self.refit, str) and self.refit in metrics else metrics[0]

    def report(self, digits=3):
        """The candidates as a table, best first.

        Parameters
        ----------
        digits : int, default=3
            Decimals of the ``mean ± std`` columns.

        Returns
        -------
        pandas.DataFrame
            One row per candidate (index: its position in ``cv_results_``): the
            parameters, ``test <metric>`` (and ``train <metric>``) as mean ± std
            over folds, ``rank <metric>`` and the mean fit time in seconds.
        """
        import pandas as pd

        check_is_fitted(self, "cv_results_")
        results = self.cv_results_
        table = pd.DataFrame(list(results["params"]))
        for metric in _metrics(results):
            table[f"test {metric}"] = _mean_std(results, "test", metric, digits)
            if f"mean_train_{metric}" in results:
                table[f"train {metric}"] = _mean_std(results, "train", metric, digits)
            table[f"rank {metric}"] = results[f"rank_test_{metric}"]
        table["fit time (s)"] = np.round(results["mean_fit_time"], digits)
        table.index.name = "candidate"
        return table.sort_values(f"rank {self._refit_metric()}", kind="stable")

    def boxplot_parameters(self, display_train=False, metric=None):
        """Score distributions per value of each searched parameter.

        Each box holds the per-fold test scores of every candidate with that
        value, so a parameter that matters shows boxes that do not overlap.

        Parameters
        ----------
        display_train : bool, default=False
            Also draw train scores (needs ``return_train_score=True``).
        metric : str, default=None
            Which metric (default: the refit metric).

        Returns
        -------
        matplotlib.figure.Figure
        """
        import matplotlib.pyplot as plt

        check_is_fitted(self, "cv_results_")
        results, metric = self.cv_results_, metric or self._refit_metric()
        if display_train and f"mean_train_{metric}" not in results:
            raise ValueError(
                "display_train=True needs a search fitted with return_train_score=True"
            )
        names = _param_names(results) or ["(no parameters)"]
        fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.5), squeeze=False)
        kinds = ["test", "train"] if display_train else ["test"]
        for ax, name in zip(axes[0], names, strict=True):
            values = [p.get(name, "(unset)") for p in results["params"]]
            labels = list(dict.fromkeys(map(repr, values)))
            for j, kind in enumerate(kinds):
                scores = _split_scores(results, kind, metric)
                data = [scores[[repr(v) == lab for v in values]].ravel() for lab in labels]
                pos = np.arange(len(labels)) * len(kinds) + j
                box = ax.boxplot(data, positions=pos, widths=0.7, patch_artist=True)
                for patch in box["boxes"]:
                    patch.set_facecolor("tab:blue" if kind == "test" else "tab:orange")
            ax.set_xticks(np.arange(len(labels)) * len(kinds) + (len(kinds) - 1) / 2, labels)
            ax.set_title(name)
            ax.set_ylabel(metric)
        if display_train:
            handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in ("tab:blue", "tab:orange")]
            fig.legend(handles, kinds, loc="upper right")
        fig.tight_layout()
        return fig

    def visualize(self, filename=None, ax=None):
        """Draw the merged graph that ``fit`` computed (tasks by kind and depth).

        Parameters
        ----------
        filename : str, default=None
            Also save the figure there.
        ax : matplotlib Axes, default=None

        Returns
        -------
        matplotlib.figure.Figure
        """
        check_is_fitted(self, "dask_graph_")
        return draw_graph(self.dask_graph_, filename=filename, ax=ax)


def _kind(key):
    name = key[0] if isinstance(key, tuple) else str(key)
    head, _, rest = name.partition("-")
    return f"{head} {rest.split('-')[0]}" if head in ("data", "select") else head


def _depths(dsk):
    deps = {k: get_dependencies(dsk, k) for k in dsk}
    depth = {}

    def of(k):
        if k not in depth:
            depth[k] = 1 + max((of(d) for d in deps[k]), default=-1)
        return depth[k]

    for k in dsk:
        of(k)
    return depth, deps


def draw_graph(dsk, *, filename=None, ax=None):
    """A layered drawing of a task graph: one row per depth, colour per task kind."""
    import matplotlib.pyplot as plt

    depth, deps = _depths(dsk)
    rows = {}
    for k in sorted(dsk, key=lambda k: (_kind(k), str(k))):
        rows.setdefault(depth[k], []).append(k)
    pos = {}
    for d, keys in rows.items():
        for i, k in enumerate(keys):
            pos[k] = ((i + 0.5) / len(keys), -d)
    if ax is None:
        width = max(6, min(16, max(len(v) for v in rows.values()) * 0.15))
        fig, ax = plt.subplots(figsize=(width, 1.2 + 0.8 * len(rows)))
    fig = ax.figure
    for k, ds in deps.items():
        for d in ds:
            (x0, y0), (x1, y1) = pos[d], pos[k]
            ax.plot([x0, x1], [y0, y1], color="0.8", lw=0.5, zorder=1)
    kinds = sorted({_kind(k) for k in dsk})
    colors = plt.get_cmap("tab10")
    for i, kind in enumerate(kinds):
        pts = np.array([pos[k] for k in dsk if _kind(k) == kind])
        ax.scatter(
            pts[:, 0], pts[:, 1], s=25, color=colors(i % 10), zorder=2, label=f"{kind} ({len(pts)})"
        )
    ax.set_axis_off()
    ax.set_title(f"{len(dsk)} tasks (top: data; each row depends on rows above)")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small", frameon=False)
    fig.tight_layout()
    if filename is not None:
        fig.savefig(filename, bbox_inches="tight")
    return fig
