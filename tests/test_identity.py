"""A job's identity names what it computes: recording and resume settings leave it unchanged, the rest changes it."""

import pytest
from conftest import compose_config

from bnrepro.lifecycle.identity import job_identity


@pytest.fixture(autouse=True)
def pinned_code_version(monkeypatch):
    monkeypatch.setenv("BNREPRO_CODE_VERSION", "test")


@pytest.mark.parametrize(
    "recording", ["loop.log_every_n_steps=7", "trainer.enable_progress_bar=false", "logger=none", "resume=auto"]
)
def test_a_recording_or_resume_setting_leaves_the_identity_unchanged(recording):
    assert job_identity(compose_config(recording)).digest == job_identity(compose_config()).digest


@pytest.mark.parametrize("computing", ["loop.eval_every_n_steps=250", "seed=1", "norm=none"])
def test_a_setting_that_changes_the_result_changes_the_identity(computing):
    assert job_identity(compose_config(computing)).digest != job_identity(compose_config()).digest
