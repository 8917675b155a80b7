"""`python -m bnrepro.report` on a small real sweep: sweeps/mnist_fig1.yaml on mnist_mini, 2 seeds, 200 steps."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bnrepro.report.__main__ import main, write_report
from bnrepro.report.claims import CLAIMS_FILE, Published, load_claims
from bnrepro.report.results import write_results
from bnrepro.report.runs import RunRecord, group_by_configuration
from bnrepro.report.tables import comparison_rows, comparison_table

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ("fig1a.png", "fig1b.png", "fig1c.png")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The MNIST sweep file, shrunk: 2 configurations x 2 seeds x 200 steps, evaluated every 50 steps.

    It runs with its working directory in a temporary folder, so its MLflow artifacts land there too.
    """
    home = tmp_path_factory.mktemp("sweep")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    command = [
        sys.executable, str(ROOT / "train.py"), "-m", "-cd", str(ROOT / "sweeps"), "-cn", "mnist_fig1",
        "data=mnist_mini", "seed=0,1", "trainer.max_steps=200", "loop.eval_every_n_steps=50",
        "loop.log_every_n_steps=50", "trainer.enable_progress_bar=false", "callbacks.checkpoint=null",
        f"hydra.sweep.dir={home / 'multirun'}",
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=home, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out_dir = write_report("mnist_fig1", out_dir=home / "report", uri=uri)
    return uri, out_dir


def test_report_writes_non_empty_png_figures(sweep):
    _, out_dir = sweep
    for name in FIGURES:
        data = (out_dir / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, name


MNIST_CLAIMS = [claim.id for claim in load_claims(CLAIMS_FILE).claims if claim.experiments == ("mnist_fig1",)]


def test_report_md_has_the_provenance_the_table_and_the_verdicts_of_the_sweeps_claims(sweep):
    _, out_dir = sweep
    text = (out_dir / "report.md").read_text()
    assert "**Data**: mnist_mini" in text and "**Seeds**: 0, 1" in text and "**Steps**: 200" in text
    assert "| norm=bn | 2 (0, 1) |" in text and "| norm=none | 2 (0, 1) |" in text
    for claim_id in MNIST_CLAIMS:
        assert f"`{claim_id}`" in text
    others = len(load_claims(CLAIMS_FILE).claims) - len(MNIST_CLAIMS)
    assert f"{others} claims need experiments this sweep lacks" in text


def test_claims_json_judges_only_the_claims_of_the_sweeps_experiment(sweep):
    _, out_dir = sweep
    document = json.loads((out_dir / "claims.json").read_text())
    assert sorted(document["verdicts"]) == sorted(MNIST_CLAIMS)
    assert len(document["not_judged"]["claims"]) == len(load_claims(CLAIMS_FILE).claims) - len(MNIST_CLAIMS)


def test_end_of_training_claims_on_runs_shorter_than_the_protocol_are_not_run(sweep):
    _, out_dir = sweep
    claims = {claim["id"]: claim for claim in json.loads((out_dir / "claims.json").read_text())["claims"]}
    final = claims["mnist.bn_higher_final_accuracy"]
    assert final["verdict"] == "NOT_RUN" and final["reason"] == "runs end at step 200; the protocol is 50,000"


def test_a_scale_free_claim_on_two_seeds_is_inconclusive_and_records_its_runs_and_interval(sweep):
    _, out_dir = sweep
    claims = {claim["id"]: claim for claim in json.loads((out_dir / "claims.json").read_text())["claims"]}
    faster = claims["mnist.bn_trains_faster"]
    assert faster["verdict"] in ("INCONCLUSIVE", "NOT_RUN")
    if faster["verdict"] == "INCONCLUSIVE":
        assert "judged at step 200" in faster["reason"]
        assert [len(group["runs"]) for group in faster["configurations"]] == [2, 2]
        assert len(faster["checks"][0]["interval"]) == 2


def test_claims_json_is_byte_identical_when_the_report_is_rebuilt(sweep, tmp_path):
    uri, out_dir = sweep
    again = write_report("mnist_fig1", out_dir=tmp_path / "again", uri=uri, upload=False)
    assert (again / "claims.json").read_bytes() == (out_dir / "claims.json").read_bytes()


def test_report_is_logged_to_the_sweeps_parent_run(sweep):
    uri, out_dir = sweep
    client = MlflowClient(uri)
    parent = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        "tags.`bnrepro.role` = 'sweep' and tags.`bnrepro.sweep_name` = 'mnist_fig1'",
    )[0]
    logged = {Path(artifact.path).name for artifact in client.list_artifacts(parent.info.run_id, "report")}
    assert {*FIGURES, "report.md", "claims.json"} <= logged


def test_an_unknown_sweep_is_a_one_line_error_with_exit_code_2(sweep, monkeypatch, capsys):
    uri, _ = sweep
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["no_such_sweep", "--no-upload"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("bnrepro: error: no sweep named 'no_such_sweep'") and error.count("\n") == 1
    assert "mnist_fig1" in error  # the known sweeps are listed


def test_a_malformed_claims_file_is_a_one_line_error_with_exit_code_2(tmp_path, capsys):
    bad = tmp_path / "claims.yaml"
    bad.write_text("claims:\n  - {id: x, paper: p, comparison: nope, configurations: [{norm: bn}]}\n")
    assert main(["mnist_fig1", "--claims", str(bad), "--no-upload"]) == 2
    error = capsys.readouterr().err
    assert str(bad) in error and "claim #1 (x): unknown comparison 'nope'" in error and error.count("\n") == 1


def job(name: str, seed: int, acc: tuple[float, ...] = (0.5, 0.9), **tags) -> RunRecord:
    history = {"val/acc": [(100 * (i + 1), value) for i, value in enumerate(acc)]}
    return RunRecord(f"{name}-{seed}", f"{name},seed={seed}", "FINISHED", {**tags, "seed": str(seed)}, {}, history)


def test_runs_that_differ_only_by_seed_form_one_configuration_named_by_what_varies():
    runs = [
        job(f"norm={norm},optim.lr_multiplier=2", seed, norm=norm, experiment="mnist_fig1")
        for norm in ("bn", "none")
        for seed in (0, 1)
    ]
    groups = group_by_configuration(runs)
    assert list(groups) == ["norm=bn", "norm=none"]
    assert [[run.seed for run in group] for group in groups.values()] == [["0", "1"], ["0", "1"]]


def test_configurations_come_from_logged_params_not_from_run_names():
    runs = [job("same name", seed, norm="bn") for seed in (0, 1)]
    runs[1].params["optim.lr"] = "0.5"
    runs[0].params["optim.lr"] = "0.1"
    assert list(group_by_configuration(runs)) == ["optim.lr=0.1", "optim.lr=0.5"]


def test_a_param_that_varies_beside_a_group_choice_splits_the_configurations_too():
    runs = []
    for lr in ("0.1", "0.5"):
        for norm in ("bn", "none"):
            run = job(f"norm={norm},lr={lr}", 0, norm=norm)
            run.params.update({"model.base_lr": lr, "optim.lr": lr})  # optim.lr follows model.base_lr
            runs.append(run)
    groups = group_by_configuration(runs)
    assert list(groups) == [
        "norm=bn,model.base_lr=0.1",
        "norm=none,model.base_lr=0.1",
        "norm=bn,model.base_lr=0.5",
        "norm=none,model.base_lr=0.5",
    ]


def test_the_table_shows_the_papers_number_beside_ours_where_published():
    groups = {
        "experiment=bn_x30": [job("experiment=bn_x30", seed, (0.70, 0.75), experiment="bn_x30") for seed in (0, 1)]
    }
    published = [Published({"experiment": "bn_x30"}, {"max_acc": 0.748, "steps_to_target": 2.7e6}, "Figure 3")]
    table = comparison_table(comparison_rows(groups, 0.72, published), 0.72)
    assert "| steps to 72.00% |" in table
    assert "median 200 [200–200] (paper: 2.7e+06)" in table and "75.00 ± 0.00% [75.00–75.00] (paper: 74.8%)" in table


def test_summary_lists_every_run_with_its_first_final_and_best_accuracy(sweep):
    from bnrepro.report.runs import load_sweep
    from bnrepro.report.summary import summary_table

    uri, _ = sweep
    lines = summary_table(load_sweep("mnist_fig1", uri=uri)).splitlines()
    rows = [line.split() for line in lines[3:]]
    assert sorted((row[0], row[1]) for row in rows) == [
        ("norm=bn", "0"),
        ("norm=bn", "1"),
        ("norm=none", "0"),
        ("norm=none", "1"),
    ]
    assert all(row[2] == "FINISHED" and row[3] == "200" and row[5] == "@50" for row in rows)


MINI_PROTOCOL = """
protocol: mini
sweep: mnist_fig1
command: make mini
question: Does the shrunk sweep run as registered?
grid: {norm: [bn, none], seed: [0, 1]}
fixed: {trainer.max_steps: 200, data: mnist_mini}
claims: [mnist.bn_trains_faster]
"""


def test_the_results_page_shows_each_protocols_verdicts_deviations_and_figures(sweep, tmp_path):
    uri, _ = sweep
    protocols = tmp_path / "protocols"
    protocols.mkdir()
    (protocols / "mini.yaml").write_text(MINI_PROTOCOL)
    (protocols / "later.yaml").write_text(MINI_PROTOCOL.replace("mnist_fig1", "never_ran").replace("mini", "later"))
    out = write_results(tmp_path / "docs" / "results.md", protocols, uri=uri, upload=False, reports_dir=tmp_path)
    text = out.read_text()
    assert "| mini | `mnist.bn_trains_faster` | **" in text
    assert "is not committed: nothing shows it was fixed before its runs" in text  # tmp_path is not in git
    assert "Not run yet: `make later`" in text
    assert "**Wall time**:" in text and "![fig1a](results/mnist_fig1/fig1a.png)" in text
    assert (tmp_path / "docs" / "results" / "mnist_fig1" / "fig1a.png").read_bytes().startswith(PNG_MAGIC)
