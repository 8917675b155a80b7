"""`python -m bnrepro.report.results`: docs/results.md, every pre-registered reproduction from its tracked runs.

For each protocol in protocols/ whose sweep is in the store, it writes the sweep's report
(`python -m bnrepro.report SWEEP`: figures, report.md, claims.json, uploaded to the sweep's parent
run), copies the figures to docs/results/<sweep>/, and composes docs/results.md from the reports'
claims.json: per protocol the question, command, registration commit, deviations, wall time and
per-run cost, the figure, and every registered claim's verdict with its effect and interval
(across a free choice: the verdict at each value and how many values it holds at). A protocol
whose sweep has not run is listed as such. Exit code 2 with one line for a malformed protocol or
claims file.
"""

import argparse
import json
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

from bnrepro.messages import duration
from bnrepro.report.__main__ import REPORTS_DIR, safe_name, write_report
from bnrepro.report.claims import ClaimsFileError, base_claim_id
from bnrepro.report.protocol import PROTOCOLS_DIR, Preregistration, ProtocolFileError, load_preregistration
from bnrepro.report.runs import SweepNotFound
from bnrepro.report.tables import VERDICT_RULES
from bnrepro.tracking.job import git_state
from bnrepro.tracking.tags import GIT_COMMIT_TAG, GIT_DIRTY_TAG, tracking_uri

RESULTS_FILE = Path("docs/results.md")
FIGURES = ("fig1a.png", "fig1b.png", "fig1c.png")


def write_results(
    out: Path = RESULTS_FILE,
    protocols_dir: Path = PROTOCOLS_DIR,
    uri: str | None = None,
    upload: bool = True,
    reports_dir: Path = REPORTS_DIR,
) -> Path:
    plans = [(path, load_preregistration(path)) for path in sorted(Path(protocols_dir).glob("*.yaml"))]
    code = git_state()  # before the figures below are copied: their change must not mark the code dirty
    sections, summary = [], []
    for path, plan in plans:
        try:
            report_dir = write_report(
                plan.sweep, reports_dir / safe_name(plan.sweep), uri=uri, upload=upload, protocols_dir=protocols_dir
            )
        except SweepNotFound:
            sections.append(not_run_section(path, plan))
            summary.append(f"| {plan.protocol} | not run yet | | |")
            continue
        document = json.loads((report_dir / "claims.json").read_text())
        figures = copy_figures(report_dir, out.parent / "results" / safe_name(plan.sweep))
        sections.append(protocol_section(path, plan, document, [f.relative_to(out.parent) for f in figures]))
        summary += summary_rows(plan, document)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(results_markdown(summary, sections, uri, code))
    return out


def copy_figures(report_dir: Path, target: Path) -> list[Path]:
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in FIGURES:
        if (report_dir / name).exists():
            copied.append(Path(shutil.copyfile(report_dir / name, target / name)))
    return copied


def verdicts_by_claim(document: dict) -> dict[str, dict[str, str]]:
    """claim id -> {setting of the free choice ("" when none) -> verdict}."""
    grouped: dict[str, dict[str, str]] = {}
    for result_id, verdict in document["verdicts"].items():
        setting = result_id.partition("@")[2]
        grouped.setdefault(base_claim_id(result_id), {})[setting] = verdict
    return grouped


def verdict_summary(by_setting: dict[str, str]) -> str:
    """One verdict, or for a claim judged across a choice: how many values it holds at, and the rest."""
    if list(by_setting) == [""]:
        return f"**{by_setting['']}**"
    counts = {verdict: sum(v == verdict for v in by_setting.values()) for verdict in dict.fromkeys(by_setting.values())}
    passed = counts.pop("PASS", 0)
    rest = ", ".join(f"{count} {verdict}" for verdict, count in counts.items())
    return f"**holds at {passed} of {len(by_setting)}**" + (f" ({rest})" if rest else "")


def summary_rows(plan: Preregistration, document: dict) -> list[str]:
    grouped = verdicts_by_claim(document)
    return [
        f"| {plan.protocol} | `{claim}` | {verdict_summary(grouped[claim]) if claim in grouped else 'not judged'} |"
        for claim in plan.claims
    ]


def protocol_section(path: Path, plan: Preregistration, document: dict, figures: list[Path]) -> list[str]:
    protocol, timing, about = document["protocol"] or {}, document["timing"], document["provenance"]
    deviations = protocol.get("deviations", [])
    commits = ", ".join(f"`{commit[:12]}`" for commit in protocol.get("run_commits", [])) or "none recorded"
    registered = protocol.get("registered_at")
    lines = [
        f"## {plan.protocol}",
        "",
        plan.question,
        "",
        f"- **Command**: `{plan.command}`; protocol [`{path}`](../{path}), "
        + (f"registered at `{registered[:12]}` ({protocol['registered_on']})" if registered else "not committed")
        + f"; runs at {commits}",
        f"- **Runs**: data {about['data']} (binarize={about['binarize']}), {about['max_steps']} steps, seeds "
        f"{about['seeds']}; status {about['statuses']}",
        f"- **Wall time**: {wall(timing['sweep_wall_s'])} for the sweep; per run median "
        f"{wall(timing['run_wall_s_median'])} ({wall(timing['run_wall_s_min'])}-"
        f"{wall(timing['run_wall_s_max'])}, {timing['runs_timed']} runs)",
        f"- **Choices**: {plan.choices or '-'}",
        f"- **Deviations from the protocol**: {'none' if not deviations else len(deviations)}",
        *[f"  - {deviation}" for deviation in deviations],
        "",
        *[f"![{figure.stem}]({figure})" for figure in figures[:1]],
        "",
        "| claim | verdict | effect, interval (corrected level) |",
        "|---|---|---|",
    ]
    for claim in document["claims"]:
        if base_claim_id(claim["id"]) in plan.claims:
            lines.append(f"| `{claim['id']}` | **{claim['verdict']}** | {effect_text(claim)} |")
    return [*lines, ""]


def effect_text(claim: dict) -> str:
    if not claim["checks"]:
        return claim["reason"].replace("|", "\\|")
    parts = []
    for check in claim["checks"]:
        low, high = check["interval"]
        parts.append(f"{check['effect']} = {check['estimate']:.4g} [{low:.4g}, {high:.4g}] ({check['level']:.2%})")
    return "; ".join(parts).replace("|", "\\|")


def not_run_section(path: Path, plan: Preregistration) -> list[str]:
    return [f"## {plan.protocol}", "", plan.question, "", f"Not run yet: `{plan.command}` (protocol `{path}`).", ""]


def results_markdown(summary: list[str], sections: list[list[str]], uri: str | None, code: dict[str, str]) -> str:
    """The page; `code` is the git state (commit, dirty flag) of the code that judged the runs."""
    dirty = " (with uncommitted changes)" if code.get(GIT_DIRTY_TAG) == "True" else ""
    commit = code.get(GIT_COMMIT_TAG, "unknown")[:12] + dirty
    lines = [
        "# Results of the pre-registered reproductions",
        "",
        f"Regenerated by `make results` (`python -m bnrepro.report.results`) at commit `{commit}` on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC from the runs in `{tracking_uri(uri)}`. Every protocol in "
        "`protocols/` was committed before its runs (each section gives the commit and checks it); every "
        "verdict is reported, passing or not.",
        "",
        VERDICT_RULES,
        "",
        "| protocol | claim | verdict |",
        "|---|---|---|",
        *summary,
        "",
    ]
    for section in sections:
        lines += section
    return "\n".join(lines)


def wall(seconds: float | None) -> str:
    return "-" if seconds is None else duration(seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bnrepro.report.results", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS_FILE, help="the results page (default docs/results.md)")
    parser.add_argument("--protocols", type=Path, default=PROTOCOLS_DIR, help="protocol folder (default protocols/)")
    parser.add_argument("--no-upload", action="store_true", help="do not log the reports to the sweeps' parent runs")
    args = parser.parse_args(argv)
    try:
        out = write_results(args.out, args.protocols, upload=not args.no_upload)
    except (ClaimsFileError, ProtocolFileError) as error:
        print(f"bnrepro: error: {error}", file=sys.stderr)
        return 2
    print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
