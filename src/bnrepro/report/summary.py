"""A one-screen comparison of a sweep's runs, read back from MLflow: `python -m bnrepro.report.summary SWEEP`."""

import sys

from bnrepro.report.runs import Sweep, SweepNotFound, group_by_configuration, load_sweep


def summary_table(sweep: Sweep, metric: str = "val/acc") -> str:
    header = f"{'configuration':<50} {'seed':>4} {'outcome':<9} {'steps':>6} {'final ' + metric:>14} {'max ' + metric:>12}"
    lines = [f"sweep {sweep.name} (parent run {sweep.parent_run_id})", header, "-" * len(header)]
    for configuration, runs in group_by_configuration(sweep.runs).items():
        for run in sorted(runs, key=lambda r: r.seed):
            points = run.history.get(metric, [])
            steps = points[-1][0] if points else 0
            lines.append(
                f"{configuration:<50} {run.seed:>4} {run.outcome:<9} {steps:>6} "
                f"{_percent(run.final(metric)):>14} {_percent(run.best(metric)):>12}"
            )
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bnrepro.report.summary SWEEP  (a sweep name, sweep id or parent run id)", file=sys.stderr)
        return 2
    try:
        print(summary_table(load_sweep(argv[0])))
    except SweepNotFound as error:
        print(f"bnrepro: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
