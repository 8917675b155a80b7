"""The sweep's parent run as the MLflow UI shows it: report.html self-contained, the verdicts as its
description, one summary metric per configuration; and, in headless Chromium over `make ui` (slow;
`make ui-check`), the pages a person opens."""

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from cli_inprocess import cli
from conftest import QUICK
from mlflow.tracking import MlflowClient

from bnrepro.report.__main__ import write_report
from bnrepro.tracking.tags import NOTE_TAG, ROLE_TAG
from bnrepro.tracking.ui import run_link, runs_link

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


# --- in a real browser: `make ui` over the store, pages loaded in headless Chromium ---------------------
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
UI_START_SECONDS = 240  # MLflow's server imports for tens of seconds on a loaded 2-core machine


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ui(reported):
    """`python -m bnrepro.tracking.ui ui` (what `make ui` runs) over the reported store: its base URL."""
    uri, _, _ = reported
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-m", "bnrepro.tracking.ui", "ui", "--port", str(port)]
    server = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base, server)
        yield base
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn worker
        server.wait(timeout=60)


def wait_until_healthy(base: str, server: subprocess.Popen) -> None:
    for _ in range(UI_START_SECONDS):
        if server.poll() is not None:
            raise RuntimeError(f"the MLflow UI exited with {server.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{base}/health", timeout=5):
            return
        time.sleep(1)
    raise TimeoutError(f"the MLflow UI at {base} did not answer /health")


def rendered(url: str, *flags: str) -> str:
    """The page's DOM once its scripts ran (the MLflow UI is a JS app: virtual time lets it fetch and render)."""
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000", *flags, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=180).stdout


def page_dom(url: str, wanted: str, attempts: int = 3) -> str:
    """The rendered DOM, loaded again (a little longer) until it shows `wanted` or the attempts run out."""
    dom = ""
    for attempt in range(1, attempts + 1):
        dom = rendered(url, f"--virtual-time-budget={20000 * attempt}", "--dump-dom")
        if wanted in dom:
            break
    return dom


browser = pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install chromium)")


@pytest.mark.slow
@browser
def test_the_parent_run_page_lists_the_jobs_by_short_name_and_shows_the_verdicts(reported, ui):
    _, parent, _ = reported
    dom = page_dom(run_link(ui, parent.info.experiment_id, parent.info.run_id), "norm=none")
    assert "Model registry" in dom and "mnist_fig1" in dom  # (the sidebar of the model-training view)
    assert "norm=bn" in dom and "norm=none" in dom  # its child runs, named by what the sweep varies
    assert "Full report with figures" in dom and "mnist.bn_trains_faster" in dom  # the description


@pytest.mark.slow
@browser
def test_the_runs_list_opens_on_the_model_training_view_with_the_sweep(reported, ui):
    _, parent, _ = reported
    dom = page_dom(runs_link(ui, parent.info.experiment_id), "matching runs")
    assert "Model registry" in dom and "mnist_fig1" in dom
    assert "<strong>3</strong> matching runs" in dom  # the parent and its two jobs (collapsed under it)


@pytest.mark.slow
@browser
def test_report_html_from_the_ui_shows_its_figures_and_the_verdict_table(reported, ui, tmp_path):
    _, parent, _ = reported
    artifact = f"{ui}/get-artifact?path=report/report.html&run_uuid={parent.info.run_id}"
    with urllib.request.urlopen(artifact, timeout=60) as response:  # as the UI's artifact view fetches it
        page = tmp_path / "report.html"
        page.write_bytes(response.read())
    # (loaded from a file: headless Chromium stalled loading it straight from the server's get-artifact URL)
    assert "mnist.bn_trains_faster" in rendered(page.as_uri(), "--dump-dom")
    shot = tmp_path / "report.png"
    rendered(page.as_uri(), f"--screenshot={shot}", "--window-size=1100,2400")  # the whole report
    assert colored_pixels(shot) > 5000  # the figures' coloured curves: text alone is black on white


def colored_pixels(png: Path) -> int:
    """Pixels whose colour is far from any grey (figure lines and bands; text and table borders are grey)."""
    from PIL import Image

    rgb = Image.open(png).convert("RGB")
    return sum(1 for r, g, b in rgb.getdata() if max(r, g, b) - min(r, g, b) > 60)
