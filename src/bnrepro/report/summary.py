"""A one-screen comparison of a sweep's runs, read back from MLflow: `python -m bnrepro.report.summary SWEEP`."""

import sys

from bnrepro.report.runs import Sweep, SweepNotFound, group_by_configuration, load_sweep
from bnrepro.report.tables import percent_or_dash
from bnrepro.tracking.ui import sweep_link


def summary_table(sweep: Sweep, metric: str = "val/acc") -> str:
    """One line per run: its outcome, `metric` at the first evaluation (how fast it trains), at the end and its
    best."""
    header = f"{'configuration':<40} {'seed':>4} {'outcome':<9} {'steps':>6} {'first eval':>16} {'final':>8} {'max':>8}"
    lines = [f"sweep {sweep.name} (parent run {sweep.parent_run_id}): {metric}", header, "-" * len(header)]
    for configuration, runs in group_by_configuration(sweep.runs).items():
        for run in sorted(runs, key=lambda r: r.seed):
            points = run.history.get(metric, [])
            steps = points[-1][0] if points else 0
            first = f"{percent_or_dash(points[0][1])} @{points[0][0]}" if points else "-"
            lines.append(
                f"{configuration:<40} {run.seed:>4} {run.outcome:<9} {steps:>6} {first:>16} "
                f"{percent_or_dash(run.final(metric)):>8} {percent_or_dash(run.best(metric)):>8}"
            )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(
            "usage: python -m bnrepro.report.summary SWEEP  (a sweep name, sweep id or parent run id)", file=sys.stderr
        )
        return 2
    try:
        sweep = load_sweep(argv[0])
        print(summary_table(sweep))
        print(f"in the MLflow UI (make ui): {sweep_link(sweep.parent_run_id)}")
    except SweepNotFound as error:
        print(f"bnrepro: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
