"""Progress a person can follow: counted in optimizer steps, one bar on a terminal, a few lines in a log."""

import logging
import sys

from conftest import compose_config

from bnrepro.callbacks.progress import progress_line
from bnrepro.messages import duration
from bnrepro.run import train
from bnrepro.tracking.job import JobInfo

SHORT = ("logger=none", "callbacks.checkpoint=null", "loop.eval_every_n_steps=10", "loop.log_every_n_steps=10")


def test_progress_line_counts_steps_with_rate_and_eta():
    line = progress_line(step=20_450, max_steps=50_000, first_step=450, elapsed=100.0, accuracy=0.912)
    assert line == "step 20,450/50,000 (41%), 200 steps/s, ETA 2m28s, val/acc 91.2%"


def test_durations_read_in_seconds_minutes_and_hours():
    assert [duration(s) for s in (45, 185, 7800)] == ["45s", "3m05s", "2h10m"]


def test_piped_run_prints_about_ten_step_lines_ending_at_the_last_step(caplog):
    caplog.set_level(logging.INFO, logger="bnrepro.callbacks.progress")
    train(compose_config("trainer.max_steps=200", *SHORT), JobInfo())  # 20 evaluations
    lines = [r.getMessage() for r in caplog.records if r.name == "bnrepro.callbacks.progress"]
    assert 5 <= len(lines) <= 11
    assert lines[0].startswith("step 10/200 (5%)") and lines[-1].startswith("step 200/200 (100%)")


def test_terminal_bar_counts_optimizer_steps_without_evaluation_bars(capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    train(compose_config("trainer.max_steps=40", *SHORT), JobInfo())
    drawn = capsys.readouterr().out.replace("\r", "\n")
    assert "step 40/40 100%" in drawn and "steps/s" in drawn
    assert "Validation" not in drawn and "Epoch" not in drawn
