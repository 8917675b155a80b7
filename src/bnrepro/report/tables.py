"""report.md: what produced the runs, the comparison table, the figures and every claim's verdict.

The comparison table has one row per configuration (seeds pooled): steps to reach a target test
accuracy, max and final test accuracy, each as mean +- standard deviation over seeds with the
seed range, and the paper's published number beside ours where the registry has one.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

from bnrepro.report.claims import (
    Aggregate,
    Claim,
    Published,
    Result,
    Verdict,
    eval_interval,
    is_censored,
    matches,
    steps_to_reach,
    unusable_reason,
)
from bnrepro.report.protocol import ProtocolCheck
from bnrepro.report.runs import RunRecord, Sweep, numeric_order

ACCURACY = "val/acc"
DEFAULT_TARGET_FRACTION = 0.98  # without a steps_to_reach claim: 98% of the lowest configuration's mean final accuracy


@dataclass
class Row:
    configuration: str
    runs: list[RunRecord]
    usable: list[RunRecord]
    steps: Aggregate | None = None
    censored: int = 0  # runs that never reached the target: counted at their last evaluation
    max_acc: Aggregate | None = None
    final_acc: Aggregate | None = None
    published: dict[str, float] = field(default_factory=dict)

    @property
    def seeds(self) -> list[str]:
        return sorted({run.seed for run in self.usable}, key=numeric_order)


def comparison_rows(
    groups: dict[str, list[RunRecord]], target: float | None, published: Sequence[Published] = ()
) -> list[Row]:
    rows = []
    for label, runs in groups.items():
        usable = [run for run in runs if unusable_reason(run) is None and run.history.get(ACCURACY)]
        row = Row(label, runs, usable)
        if usable:
            if target is not None:
                metric = {"series": ACCURACY, "target": target}
                row.steps = Aggregate.of([steps_to_reach(run, metric) for run in usable])
                row.censored = sum(is_censored(run, metric) for run in usable)
            row.max_acc = Aggregate.of([run.best(ACCURACY) for run in usable])
            row.final_acc = Aggregate.of([run.final(ACCURACY) for run in usable])
        for entry in published:
            if runs and all(matches(run, entry.configuration) for run in runs):
                row.published = entry.values
        rows.append(row)
    return rows


def table_target(results: Sequence[Result], groups: dict[str, list[RunRecord]]) -> tuple[float | None, str]:
    """The accuracy the table counts steps to: that of the first steps_to_reach claim judged on this
    sweep, else DEFAULT_TARGET_FRACTION of the lowest configuration's mean final accuracy."""
    for result in results:
        if result.target is not None:
            return result.target, f"the target of claim `{result.claim.id}`: {result.target_rule}"
    finals = []
    for runs in groups.values():
        values = [final for run in runs if unusable_reason(run) is None and (final := run.final(ACCURACY)) is not None]
        if values:
            finals.append(sum(values) / len(values))
    if not finals:
        return None, "no configuration logged test accuracy"
    return DEFAULT_TARGET_FRACTION * min(
        finals
    ), f"{DEFAULT_TARGET_FRACTION:.0%} of the lowest configuration's mean final test accuracy"


def percent(a: Aggregate | None) -> str:
    if a is None:
        return "-"
    spread = f" ± {100 * a.std:.2f}" if a.n > 1 else ""
    return f"{100 * a.mean:.2f}{spread}% [{100 * a.min:.2f}–{100 * a.max:.2f}]"


def steps(a: Aggregate | None, censored: int = 0) -> str:
    """Median steps to the target over seeds, [min-max]; censored seeds (never reached it) are counted at
    their last evaluation, so the numbers are lower bounds where any is."""
    if a is None:
        return "-"
    note = f", {censored} of {a.n} censored (≥)" if censored else ""
    return f"median {a.median:,.0f} [{a.min:,.0f}–{a.max:,.0f}]{note}"


def published_cell(row: Row, key: str, kind: str) -> str:
    if key not in row.published:
        return ""
    value = row.published[key]
    return f" (paper: {100 * value:.1f}%)" if kind == "percent" else f" (paper: {value:,.3g})"


def comparison_table(rows: Sequence[Row], target: float | None) -> str:
    target_header = f"steps to {100 * target:.2f}%" if target is not None else "steps to target"
    lines = [
        f"| configuration | seeds | {target_header} | max test accuracy | final test accuracy |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        seeds = f"{len(row.seeds)} ({', '.join(row.seeds)})" + _left_out(row)
        lines.append(
            f"| {row.configuration} | {seeds} "
            f"| {steps(row.steps, row.censored)}{published_cell(row, 'steps_to_target', 'steps')} "
            f"| {percent(row.max_acc)}{published_cell(row, 'max_acc', 'percent')} "
            f"| {percent(row.final_acc)}{published_cell(row, 'final_acc', 'percent')} |"
        )
    return "\n".join(lines)


def _left_out(row: Row) -> str:
    """The runs a row could not use, by why: diverged runs are a result the table must show."""
    diverged = sum(run.outcome == "diverged" for run in row.runs)
    other = len(row.runs) - len(row.usable) - diverged
    return "".join(f", {count} {what}" for count, what in ((diverged, "**diverged**"), (other, "unusable")) if count)


def claims_table(results: Sequence[Result]) -> str:
    lines = ["| claim | verdict | paper (quote) | effect, interval and why |", "|---|---|---|---|"]
    for result in results:
        claim = result.claim
        quote = f"“{claim.paper}” ({claim.source})" if claim.source else f"“{claim.paper}”"
        if claim.published is not None:
            quote += f" Published: {claim.published}."
        why = result.reason + (f". Target: {result.target_rule}." if result.target_rule else "")
        lines.append(f"| `{claim.id}` | **{result.verdict.value}** | {_cell(quote)} | {_cell(why)} |")
    return "\n".join(lines)


def across_table(results: Sequence[Result], key: str) -> str:
    """One row per claim, one column per value of the free choice `key`, and how many values it holds at."""
    values: dict[str, None] = {}
    verdicts: dict[str, dict[str, Verdict]] = {}
    for result in results:
        base, _, setting = result.claim.id.partition("@")
        value = setting.partition("=")[2]
        values.setdefault(value)
        verdicts.setdefault(base, {})[value] = result.verdict
    header = [f"claim \\ {key}", *values, "holds at"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for base, by_value in verdicts.items():
        passed = sum(verdict is Verdict.PASS for verdict in by_value.values())
        cells = [by_value[value].value if value in by_value else "-" for value in values]
        lines.append(f"| `{base}` | " + " | ".join(cells) + f" | {passed} of {len(by_value)} |")
    return "\n".join(lines)


def protocol_lines(check: ProtocolCheck | None) -> list[str]:
    """The report's pre-registration section: what was fixed, when, and every deviation from it."""
    if check is None:
        return ["## Protocol", "", "No protocol in protocols/ registers this sweep: its verdicts are exploratory.", ""]
    registration = check.registration
    if registration is None:
        registered = "not committed"
    else:
        registered = f"registered at commit `{registration.first_commit[:12]}` ({registration.first_date})"
        if registration.last_commit != registration.first_commit:
            registered += f", last changed at `{registration.last_commit[:12]}`"
    commits = ", ".join(f"`{commit[:12]}`" for commit in check.run_commits) or "none recorded"
    lines = [
        "## Protocol",
        "",
        f"- **Protocol**: `{check.path}` ({check.plan.protocol}), {registered}; runs at commit(s) {commits}",
        f"- **Question**: {check.plan.question}",
        f"- **Choices**: {check.plan.choices or '-'}",
    ]
    if check.plan.budget:
        lines.append(f"- **Budget**: {check.plan.budget}")
    if check.plan.across:
        lines.append(f"- **Judged across** `{check.plan.across}`: every claim at each value, none picked")
    lines += [f"- **Deviations**: {'none' if not check.deviations else len(check.deviations)}"]
    lines += [f"  - {deviation}" for deviation in check.deviations]
    return [*lines, ""]


def out_of_scope_line(claims: Sequence[Claim]) -> str:
    """The claims this sweep cannot judge, in one line."""
    if not claims:
        return ""
    needed = sorted({experiment for claim in claims for experiment in claim.experiments})
    ids = ", ".join(claim.id for claim in claims)
    return f"{len(claims)} claims need experiments this sweep lacks ({', '.join(needed)}): {ids}."


VERDICT_RULES = (
    "Each claim is an effect with a confidence interval: seeds are the replicates (Welch t on the seed values) "
    "and, for accuracies, the evaluation set's sampling error is added as the conservative binomial bound "
    "(per-example predictions are not logged). The claims of this report are corrected together with "
    "Holm-Bonferroni. PASS: every interval lies on the claimed side; FAIL: one lies on the other side; "
    "INCONCLUSIVE: neither (fewer than 3 seeds per configuration is INCONCLUSIVE at best); "
    "NOT_RUN: it cannot be judged on these runs, with the reason."
)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def provenance(sweep: Sweep) -> dict[str, str]:
    """Data, steps, batch, seeds and experiment(s) of the sweep, read from its runs' tags and params."""
    runs = sweep.runs

    def values(read) -> str:
        found = sorted({str(v) for v in (read(run) for run in runs) if v not in (None, "")}, key=numeric_order)
        return ", ".join(found) or "?"

    last_step = values(lambda run: max((step for step, _ in run.history.get(ACCURACY, [])), default=None))
    return {
        "data": values(lambda run: run.tags.get("data")),
        "binarize": values(lambda run: run.params.get("data.binarize")),
        "batch_size": values(lambda run: run.params.get("data.batch_size")),
        "max_steps": values(lambda run: run.params.get("trainer.max_steps")),
        "last_step": last_step,
        "eval_every": values(eval_interval),
        "seeds": values(lambda run: run.seed),
        "experiment": values(lambda run: run.tags.get("experiment")),
        "optimizer": values(
            lambda run: (
                f"SGD lr {run.params.get('optim.lr')}, momentum {run.params.get('optim.momentum')}"
                if "optim.lr" in run.params
                else None
            )
        ),
        "statuses": values(lambda run: run.outcome),
    }


def report_markdown(
    sweep: Sweep,
    about: dict[str, str],  # provenance(sweep)
    rows: Sequence[Row],
    target: float | None,
    target_rule: str,
    results: Sequence[Result],
    figures: dict[str, str],
    notes: Sequence[str] = (),
    out_of_scope: Sequence[Claim] = (),
    protocol: ProtocolCheck | None = None,
) -> str:
    lines = [
        f"# Report: sweep `{sweep.name}`",
        "",
        f"- **Data**: {about['data']} (binarize={about['binarize']}), batch size {about['batch_size']}",
        f"- **Steps**: {about['max_steps']} (last evaluation at step {about['last_step']}), "
        f"test accuracy every {about['eval_every']} steps",
        f"- **Seeds**: {about['seeds']} ({len(sweep.runs)} runs; status {about['statuses']})",
        f"- **Experiment**: {about['experiment']}; optimizer: {about['optimizer']}",
        f"- **MLflow**: parent run `{sweep.parent_run_id}`, sweep id `{sweep.sweep_id}`",
        "",
        *protocol_lines(protocol),
        "## Figure 1(a): test accuracy vs training steps",
        "",
    ]
    if "fig1a" in figures:
        lines += [
            f"![Figure 1a]({figures['fig1a']})",
            "",
            "Mean over seeds; the band spans the lowest to the highest seed.",
            "",
        ]
    lines += [
        "## Comparison table",
        "",
        "Mean ± standard deviation over seeds, [min–max] over seeds (steps: the median). "
        f"Target accuracy: {percent_or_dash(target)} ({target_rule}).",
        "",
        comparison_table(rows, target),
        "",
    ]
    if not any(row.published for row in rows):
        lines += ["The paper publishes no number for these configurations (for MNIST, Figure 1 shows curves only).", ""]
    lines += ["## Figure 1(b, c): input distribution of a typical sigmoid of the last hidden layer", ""]
    panels = [key for key in ("fig1b", "fig1c") if key in figures]
    lines += [
        " ".join(f"![Figure {key[3:]}]({figures[key]})" for key in panels)
        if panels
        else "Not drawn: see the notes below.",
        "",
    ]
    lines += ["## Claims", "", VERDICT_RULES, ""]
    if protocol is not None and protocol.plan.across:
        lines += [across_table(results, protocol.plan.across), ""]
    lines += [claims_table(results), ""]
    if out_of_scope:
        lines += [out_of_scope_line(out_of_scope), ""]
    if notes:
        lines += ["## Notes", "", *[f"- {note}" for note in notes], ""]
    return "\n".join(lines)


def percent_or_dash(value: float | None) -> str:
    """A fraction as a percentage with two decimals; "-" when there is none."""
    return "-" if value is None else f"{100 * value:.2f}%"
