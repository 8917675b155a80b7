"""What a run is tagged with about its job: Hydra's view of it (`JobInfo`) and the code's git state."""

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from bnrepro.tracking.tags import GIT_COMMIT_TAG, GIT_DIRTY_TAG, GROUPS, SWEEP_VARYING_ENV


@dataclass
class JobInfo:
    """What Hydra knows about the job being run."""

    choices: dict[str, str] = field(default_factory=dict)  # config group -> chosen option
    overrides: list[str] = field(default_factory=list)  # the command-line overrides of this job
    name: str = ""  # readable run name, from the overrides
    output_dir: str = ""
    sweep_id: str | None = None  # the sweep directory, when the job belongs to a multirun
    config_name: str = "config"
    config_dirs: list[str] = field(default_factory=list)  # config directories added with --config-dir
    parallel_jobs: int = 1  # jobs of this sweep running at once (the joblib launcher's workers)

    @classmethod
    def from_hydra(cls) -> "JobInfo":
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra = HydraConfig.get()
        choices = {group: str(option) for group, option in hydra.runtime.choices.items() if group in GROUPS}
        multirun = hydra.mode == RunMode.MULTIRUN
        overrides = list(hydra.overrides.task)
        varying = os.environ.get(SWEEP_VARYING_ENV, "").split(",") if multirun else []
        return cls(
            choices=choices,
            overrides=overrides,
            name=run_name(overrides, varying) or hydra.job.override_dirname or choices.get("experiment", "run"),
            output_dir=hydra.runtime.output_dir,
            sweep_id=str(hydra.sweep.dir) if multirun else None,
            config_name=hydra.job.config_name,
            config_dirs=[s.path for s in hydra.runtime.config_sources if s.provider == "command-line"],
            parallel_jobs=_parallel_jobs(hydra.launcher) if multirun else 1,
        )


def run_name(overrides: list[str], varying: list[str]) -> str:
    """A sweep job's run name: its values of the keys the sweep varies ('norm=bn,seed=0'), so that the
    part that tells the jobs apart comes first (the keys every job shares are in its params and tags)."""
    keys = {key for key in varying if key}
    return ",".join(o for o in overrides if o.split("=", 1)[0].lstrip("+~") in keys)


def _parallel_jobs(launcher: DictConfig) -> int:
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return 1
    n_jobs = int(launcher.get("n_jobs", 1))
    return n_jobs if n_jobs > 0 else max((os.cpu_count() or 1) + 1 + n_jobs, 1)  # joblib: -1 = every core


def git(*args: str, cwd: Path | None = None) -> str:
    """stdout of `git args` in `cwd`; raises OSError / SubprocessError outside a checkout.

    A fixed argument list, never a shell string: nothing from the config reaches a command line.
    """
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=30).stdout


def git_state(cwd: Path | None = None) -> dict[str, str]:
    """Commit and dirty flag of the working tree at `cwd` (default: here), or nothing outside a git checkout."""
    try:
        commit = git("rev-parse", "HEAD", cwd=cwd).strip()
        status = git("status", "--porcelain", "--untracked-files=no", cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return {}
    return {GIT_COMMIT_TAG: commit, GIT_DIRTY_TAG: str(bool(status.strip()))}


def with_context_tags(tags: dict[str, str]) -> dict[str, str]:
    """`tags` over MLflow's own context tags (mlflow.user, mlflow.source.name and .type, mlflow.source.git.*),
    from MLflow's public context-provider registry, as `mlflow.start_run` sets them and `create_run` does not."""
    from mlflow.tracking.context.registry import resolve_tags

    return resolve_tags(tags)
