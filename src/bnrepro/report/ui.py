"""What a sweep's parent run shows in the MLflow UI: `report.html` (the report as one self-contained page,
figures inline as data URIs: the UI's artifact view renders HTML, not markdown images), its description
(``mlflow.note.content``: the comparison and the verdicts) and one summary metric per configuration."""

import base64
import html
from collections.abc import Sequence
from pathlib import Path

import markdown

from bnrepro.report.claims import Result
from bnrepro.report.tables import Row, comparison_table

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; line-height: 1.45; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; vertical-align: top; }
th { background: #f4f4f4; }
img { max-width: 100%; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""
NOTE_LIMIT = 8000  # MLflow's limit on a tag value (mlflow.utils.validation.MAX_TAG_VAL_LENGTH, MLflow 3.x)
REASON_LIMIT = 240


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def report_html(report_markdown: str, title: str) -> str:
    """One HTML page from the report's markdown (its figures given as data URIs), readable anywhere."""
    body = markdown.markdown(report_markdown, extensions=["tables"])
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def parent_note(rows: Sequence[Row], target: float | None, results: Sequence[Result]) -> str:
    """The parent run's description (markdown): the comparison table and one line per claim's verdict."""
    verdicts = ["| claim | verdict | why |", "|---|---|---|"] + [
        f"| `{r.claim.id}` | **{r.verdict.value}** | {_short(r.reason)} |" for r in results
    ]
    note = "\n".join(
        [
            "Full report with figures: artifact `report/report.html` (Artifacts tab).",
            "",
            comparison_table(rows, target),
            "",
            *verdicts,
        ]
    )
    return note if len(note) <= NOTE_LIMIT else note[: NOTE_LIMIT - 40] + "\n\n[cut: see report/report.html]"


def summary_metrics(rows: Sequence[Row]) -> dict[str, float]:
    """Mean over seeds of the final and the best test accuracy, one metric per configuration, so that the
    runs list and the chart view show the comparison on the parent run itself."""
    metrics = {}
    for row in rows:
        label = row.configuration.replace("=", ":").replace(",", " ")  # MLflow keys: no '=' or ','
        if row.final_acc is not None:
            metrics[f"final val_acc/{label}"] = row.final_acc.mean
        if row.max_acc is not None:
            metrics[f"max val_acc/{label}"] = row.max_acc.mean
    return metrics


def _short(text: str) -> str:
    text = text.replace("|", "/").replace("\n", " ")
    return text if len(text) <= REASON_LIMIT else text[: REASON_LIMIT - 1] + "…"
