"""The sweep's parent run as the MLflow UI shows it: report.html self-contained, the verdicts as its
description, one summary metric per configuration."""

import re
from pathlib import Path

import pytest
from cli_inprocess import cli
from conftest import QUICK
from mlflow.tracking import MlflowClient

from bnrepro.report.__main__ import write_report
from bnrepro.tracking.tags import NOTE_TAG, ROLE_TAG

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """sweeps/mnist_fig1.yaml on mnist_mini, seed 0, 100 steps, and its report: (store uri, parent run, out dir)."""
    home = tmp_path_factory.mktemp("reported")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        args = ["-m", "-cd", str(ROOT / "sweeps"), "-cn", "mnist_fig1", "data=mnist_mini", "seed=0"]
        assert cli(home, *args, "trainer.max_steps=100", *QUICK) == 0
        out_dir = write_report("mnist_fig1", out_dir=home / "report", uri=uri)
    client = MlflowClient(uri)
    (parent,) = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], f"tags.`{ROLE_TAG}` = 'sweep'"
    )
    return uri, client.get_run(parent.info.run_id), out_dir


def test_report_html_carries_its_figures_inline_and_loads_nothing_else(reported):
    _, _, out_dir = reported
    page = (out_dir / "report.html").read_text()
    sources = re.findall(r'<img[^>]* src="([^"]+)"', page)
    assert len(sources) == 3 and all(source.startswith("data:image/png;base64,") for source in sources)
    assert "<table>" in page and "![" not in page


def test_parent_run_description_holds_the_comparison_and_the_verdicts(reported):
    _, parent, _ = reported
    note = parent.data.tags[NOTE_TAG]
    assert "| norm=bn |" in note and "| norm=none |" in note
    assert "| `mnist.bn_trains_faster` | **" in note and "report/report.html" in note


def test_parent_run_has_a_final_accuracy_metric_per_configuration(reported):
    _, parent, _ = reported
    assert {"final val_acc/norm:bn", "final val_acc/norm:none"} <= set(parent.data.metrics)


def test_report_html_is_an_artifact_of_the_parent_run(reported):
    uri, parent, _ = reported
    logged = {Path(a.path).name for a in MlflowClient(uri).list_artifacts(parent.info.run_id, "report")}
    assert "report.html" in logged
