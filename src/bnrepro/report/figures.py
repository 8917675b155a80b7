"""The paper's Figure 1 from a sweep's runs, as PNG files (matplotlib, Agg backend: no display needed).

* Figure 1(a): test accuracy vs training steps, one line per configuration: the mean over seeds,
  with a band from the lowest to the highest seed. Two panels: linear steps as in the paper, and
  log-scaled steps, where the early phase ("trains faster") is visible.
* Figure 1(b, c): the {15, 50, 85}th percentiles of the sigmoid input of one typical unit of the
  last hidden layer over training, without BN (b) and with BN (c), on shared axes.
"""

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from bnrepro.report.claims import diagnostic_units, unit_drift, unusable_reason  # noqa: E402
from bnrepro.report.runs import RunRecord  # noqa: E402

PERCENTILE_STYLES = {"p85": ("85th", "tab:red"), "p50": ("50th", "tab:blue"), "p15": ("15th", "tab:green")}


def seed_band(runs: Sequence[RunRecord], metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean, min, max) over the runs, at the steps every run evaluated."""
    histories = [dict(run.history.get(metric, [])) for run in runs]
    steps = sorted(set.intersection(*(set(history) for history in histories))) if histories else []
    values = np.array([[history[step] for step in steps] for history in histories], dtype=float).reshape(
        len(histories), len(steps)
    )
    return np.array(steps), values.mean(axis=0), values.min(axis=0), values.max(axis=0)


def accuracy_figure(groups: dict[str, list[RunRecord]], path: Path, title: str, metric: str = "val/acc") -> Path:
    """Figure 1(a): mean test accuracy per configuration with a min-max band over seeds."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for color, (label, runs) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], groups.items(), strict=False):
        usable = [run for run in runs if unusable_reason(run) is None and run.history.get(metric)]
        if not usable:
            continue
        steps, mean, low, high = seed_band(usable, metric)
        for ax in axes:
            ax.plot(steps, mean, color=color, label=f"{label} (n={len(usable)})")
            ax.fill_between(steps, low, high, color=color, alpha=0.25, linewidth=0)
    axes[0].set_title("linear steps (as in the paper)")
    axes[1].set_xscale("log")
    axes[1].set_title("log steps (early training)")
    for ax in axes:
        ax.set_xlabel("training steps")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def typical_unit(run: RunRecord, site: str = "last") -> str | None:
    """The logged unit whose median drift (see claims.percentile_drift) is the median among the run's units."""
    units = diagnostic_units(run, site)
    drifts = {unit: unit_drift(curves, "p50", 0.0) for unit, curves in units.items()}
    ranked = sorted((drift, unit) for unit, drift in drifts.items() if drift is not None)
    return ranked[(len(ranked) - 1) // 2][1] if ranked else None


def percentile_figures(panels: list[tuple[RunRecord, str, str]], paths: list[Path], site: str = "last") -> list[Path]:
    """Figure 1(b, c): one PNG per (run, unit, title), all on the same y-axis limits."""
    curves = [diagnostic_units(run, site)[unit] for run, unit, _ in panels]
    values = [value for unit_curves in curves for series in unit_curves.values() for value in series.values()]
    limits = (min(values), max(values)) if values else (0.0, 1.0)
    margin = 0.05 * (limits[1] - limits[0] or 1.0)
    written = []
    for (_, _, title), unit_curves, path in zip(panels, curves, paths, strict=True):
        figure, ax = plt.subplots(figsize=(5.5, 4.2))
        for key, (name, color) in PERCENTILE_STYLES.items():
            points = sorted(unit_curves.get(key, {}).items())
            ax.plot([s for s, _ in points], [v for _, v in points], color=color, label=f"{name} percentile")
        ax.set_ylim(limits[0] - margin, limits[1] + margin)
        ax.set_xlabel("training steps")
        ax.set_ylabel("input to the sigmoid")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        ax.set_title(title, fontsize=10)
        written.append(_save(figure, path))
    return written


def _save(figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
