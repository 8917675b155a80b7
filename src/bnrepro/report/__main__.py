"""`python -m bnrepro.report SWEEP`: the paper's Figure 1, the comparison table and every claim's verdict.

Reads the sweep's runs back from MLflow (SWEEP: a sweep name, sweep id or parent run id; the
latest sweep of that name wins) and writes, under outputs/reports/<sweep name>/:

* fig1a.png             test accuracy vs steps, mean over seeds with a min-max band (Fig. 1a)
* fig1b.png, fig1c.png  {15,50,85}th percentiles of a typical last-hidden-layer unit without / with BN
* report.md             data, steps and seeds; the protocol the sweep was pre-registered under
                        (protocols/) and every deviation from it; the comparison table; the claims
                        and their verdicts (with a protocol's `across`: at every value of that choice)
* report.html           the same as one self-contained page (figures inline), as the MLflow UI shows it
* claims.json           the same verdicts, machine-readable: per claim the runs used, the effect, its
                        interval, the test and correction (byte-identical on the same store)

then uploads that folder as artifacts (``report/``) of the sweep's parent run, with the comparison and the
verdicts as its description and one summary metric per configuration (`bnrepro.report.ui`). Exit code 2 with
one line on stderr for an unknown sweep or a malformed claims file.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

from bnrepro.report.claims import (
    CLAIMS_FILE,
    Claim,
    ClaimsFileError,
    Result,
    base_claim_id,
    evaluate,
    in_scope,
    load_claims,
    unusable_reason,
)
from bnrepro.report.figures import accuracy_figure, percentile_figures, typical_unit
from bnrepro.report.protocol import PROTOCOLS_DIR, ProtocolCheck, ProtocolFileError, check_protocol, find_protocol
from bnrepro.report.runs import RunRecord, Sweep, SweepNotFound, group_by_configuration, load_sweep, numeric_order
from bnrepro.report.tables import ACCURACY, comparison_rows, provenance, report_markdown, table_target
from bnrepro.report.ui import data_uri, parent_note, report_html, summary_metrics
from bnrepro.tracking.ui import sweep_link

REPORTS_DIR = Path("outputs/reports")


def write_report(
    sweep_ref: str,
    out_dir: Path | None = None,
    claims_file: Path | str = CLAIMS_FILE,
    uri: str | None = None,
    upload: bool = True,
    protocols_dir: Path = PROTOCOLS_DIR,
) -> Path:
    """Build the report of one sweep into `out_dir` (default outputs/reports/<sweep name>) and upload it."""
    registry = load_claims(claims_file)  # a malformed registry fails before the store is read
    sweep = load_sweep(sweep_ref, metrics=(ACCURACY, "val/loss"), uri=uri, prefixes=("diag/",))
    out_dir = Path(out_dir) if out_dir is not None else REPORTS_DIR / safe_name(sweep.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    registered = find_protocol(sweep.name, protocols_dir)
    across = registered[1].across if registered else None
    results = evaluate(registry, sweep.runs, across=across)
    judged = list(dict.fromkeys(base_claim_id(result.claim.id) for result in results))
    protocol = check_protocol(*registered, sweep.runs, judged) if registered else None
    out_of_scope = [claim for claim in registry.claims if not in_scope(claim, sweep.runs)]
    groups = group_by_configuration(sweep.runs)
    about = provenance(sweep)
    title = (
        f"sweep {sweep.name}: data {about['data']} (binarize={about['binarize']}), "
        f"{about['max_steps']} steps, seeds {about['seeds']}"
    )
    figures, notes = {}, []
    if sweep.runs:
        accuracy_figure(groups, out_dir / "fig1a.png", title)
        figures["fig1a"] = "fig1a.png"
    figures_bc, note = distribution_figures(groups, out_dir, about)
    figures.update(figures_bc)
    notes += [note] if note else []
    target, rule = table_target(results, groups)
    rows = comparison_rows(groups, target, registry.published)
    (out_dir / "report.md").write_text(
        report_markdown(sweep, about, rows, target, rule, results, figures, notes, out_of_scope, protocol)
    )
    inline = {key: data_uri(out_dir / name) for key, name in figures.items()}
    page = report_markdown(sweep, about, rows, target, rule, results, inline, notes, out_of_scope, protocol)
    (out_dir / "report.html").write_text(report_html(page, f"Report: sweep {sweep.name}"))
    document = claims_document(sweep, about, results, out_of_scope, claims_file, protocol)
    (out_dir / "claims.json").write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    if upload:
        from bnrepro.tracking.sweep import log_report  # writing to MLflow happens in tracking/ only (Hydra: lazily)

        note, metrics = parent_note(rows, target, results), summary_metrics(rows)
        log_report(sweep.parent_run_id, out_dir, uri=uri, note=note, metrics=metrics)
    return out_dir


def distribution_figures(
    groups: dict[str, list[RunRecord]], out_dir: Path, about: dict[str, str]
) -> tuple[dict[str, str], str | None]:
    """Fig. 1(b) and 1(c): the lowest seed's typical unit, in the first configuration without and with BN."""
    panels, names = [], []
    for norm, name, caption in (("none", "fig1b", "(b) without BN"), ("bn", "fig1c", "(c) with BN")):
        chosen = _first_run_with_diagnostics(
            [run for runs in groups.values() for run in runs if run.tags.get("norm") == norm]
        )
        if chosen is None:
            return (
                {},
                f"Figure 1(b, c) not drawn: the sweep has no usable run with norm={norm} that logged diag/ metrics.",
            )
        run, unit = chosen
        panels.append(
            (run, unit, f"{caption}: unit {unit}, seed {run.seed}\n{about['data']}, {about['max_steps']} steps")
        )
        names.append(name)
    percentile_figures(panels, [out_dir / f"{name}.png" for name in names])
    return {name: f"{name}.png" for name in names}, None


def _first_run_with_diagnostics(runs: list[RunRecord]) -> tuple[RunRecord, str] | None:
    """The lowest-seed usable run that logged diagnostics, with its typical unit."""
    for run in sorted(runs, key=lambda run: numeric_order(run.seed)):
        if unusable_reason(run) is None and (unit := typical_unit(run)) is not None:
            return run, unit
    return None


def claims_document(
    sweep: Sweep,
    about: dict[str, str],
    results: list[Result],
    out_of_scope: list[Claim],
    claims_file: Path | str,
    protocol: ProtocolCheck | None = None,
) -> dict:
    """claims.json: per judged claim the runs used, effect, interval, test, correction and verdict; the
    protocol the sweep was registered under and its deviations."""
    return {
        "protocol": None if protocol is None else protocol.to_dict(),
        "timing": timing(sweep),
        "sweep": sweep.name,
        "sweep_id": sweep.sweep_id,
        "parent_run_id": sweep.parent_run_id,
        "claims_file": str(claims_file),
        "provenance": about,
        "verdicts": {result.claim.id: result.verdict.value for result in results},
        "claims": [result.to_dict() for result in results],
        "not_judged": {
            "reason": "the sweep has no runs of their experiments",
            "claims": [claim.id for claim in out_of_scope],
        },
    }


def timing(sweep: Sweep) -> dict:
    """The sweep's wall time (its parent run's start to end) and its job runs' wall times, in seconds."""
    durations = sorted((run.ended_ms - run.started_ms) / 1000 for run in sweep.runs if run.started_ms and run.ended_ms)
    ended = sweep.ended_ms is not None and sweep.started_ms is not None
    return {
        "sweep_wall_s": round((sweep.ended_ms - sweep.started_ms) / 1000, 1) if ended else None,
        "runs_timed": len(durations),
        "run_wall_s_median": round(statistics.median(durations), 1) if durations else None,
        "run_wall_s_min": round(durations[0], 1) if durations else None,
        "run_wall_s_max": round(durations[-1], 1) if durations else None,
    }


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._") or "sweep"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bnrepro.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="a sweep name (e.g. mnist_fig1), sweep id or parent run id")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default outputs/reports/<sweep name>)")
    parser.add_argument(
        "--claims", default=str(CLAIMS_FILE), help="claims registry (default: the package's claims.yaml)"
    )
    parser.add_argument("--no-upload", action="store_true", help="do not log the report to the sweep's parent run")
    parser.add_argument(
        "--protocols", type=Path, default=PROTOCOLS_DIR, help="pre-registered protocols (default: protocols/)"
    )
    args = parser.parse_args(argv)
    try:
        upload = not args.no_upload
        out_dir = write_report(args.sweep, args.out, args.claims, upload=upload, protocols_dir=args.protocols)
    except (SweepNotFound, ClaimsFileError, ProtocolFileError) as error:
        print(f"bnrepro: error: {error}", file=sys.stderr)
        return 2
    verdicts = json.loads((out_dir / "claims.json").read_text())["verdicts"]
    print(f"report written to {out_dir}/ (report.md, report.html, claims.json, figures)")
    for claim_id, verdict in verdicts.items():
        print(f"  {verdict:<13} {claim_id}")
    if not args.no_upload:
        parent = json.loads((out_dir / "claims.json").read_text())["parent_run_id"]
        print(f"in the MLflow UI (make ui): {sweep_link(parent, artifact='report/report.html')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
