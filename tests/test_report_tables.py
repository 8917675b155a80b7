"""The report's comparison table shows a diverged run as a result, not as a finished one."""

from bnrepro.report.runs import RunRecord
from bnrepro.report.tables import comparison_rows, comparison_table


def record(seed: str, outcome: str | None = None) -> RunRecord:
    tags = {"seed": seed, "norm": "none", **({"bnrepro.outcome": outcome} if outcome else {})}
    return RunRecord(f"run{seed}", "norm=none", "FINISHED", tags, {}, {"val/acc": [(100, 0.5), (200, 0.6)]})


def test_diverged_runs_are_named_in_the_table_and_left_out_of_the_numbers():
    rows = comparison_rows({"norm=none": [record("0"), record("1", outcome="diverged")]}, target=0.55)
    table = comparison_table(rows, target=0.55)
    assert "1 (0), 1 **diverged**" in table
    assert rows[0].final_acc.mean == 0.6 and len(rows[0].usable) == 1


def test_run_outcome_reads_diverged_before_its_mlflow_status():
    assert record("0", outcome="diverged").outcome == "diverged"
    assert record("0").outcome == "FINISHED"
