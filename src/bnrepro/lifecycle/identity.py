"""A job's content identity: a hash of what it computes, not of where or how verbosely it records it.

identity = sha256 of (the resolved config without `EXCLUDED` keys, the code version). Two jobs with
the same identity produce the same result, so a re-run sweep can skip a job whose identity already
has a FINISHED run and resume one whose identity has a checkpoint (`resume`). The identity is
stored on every run as the tag ``bnrepro.identity`` and in every checkpoint.

Code version: ``BNREPRO_CODE_VERSION`` if set (pinned deployments, tests), else the git commit of the
package's checkout plus, when the source differs from it, a hash of that difference (``git diff`` of
``src/`` and ``train.py`` and the contents of untracked files there), else the package version.
"""

import contextlib
import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bnrepro.config import flatten
from bnrepro.tracking.job import git

CODE_VERSION_ENV = "BNREPRO_CODE_VERSION"
SOURCE_ROOT = Path(__file__).resolve().parents[3]  # the checkout holding src/ and train.py
SOURCE_PATHS = ("src", "train.py")

# Keys that do not change a job's result: where and how often it records, how it is resumed.
# loop.eval_every_n_steps stays in: it decides which points the result's curves hold.
EXCLUDED = (
    "logger",  # tracking store, experiment name, heartbeat settings
    "sweep_name",
    "resume",
    "rerun",
    "trainer.enable_progress_bar",
    "loop.log_every_n_steps",  # how often the training loss is recorded; the trajectory is the same
    "callbacks.checkpoint",  # when and where state is saved
)


@dataclass(frozen=True)
class JobIdentity:
    digest: str  # what runs are tagged with
    config: dict[str, str]  # the dotted keys that went into it, for explaining a mismatch
    code_version: str


def job_identity(cfg: DictConfig) -> JobIdentity:
    config = identity_config(cfg)
    code = code_version()
    payload = json.dumps({"config": config, "code": code}, sort_keys=True)
    return JobIdentity(hashlib.sha256(payload.encode()).hexdigest()[:24], config, code)


def identity_config(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as dotted keys -> strings, without the keys that do not change the result."""
    container = OmegaConf.to_container(cfg, resolve=True)
    return {key: value for key, value in flatten(container, leaf=_as_json).items() if not _excluded(key)}


def config_differences(old: dict[str, str], new: dict[str, str], limit: int = 5) -> str:
    """'key: old -> new' for the keys that differ (at most `limit`), for one-line messages."""
    keys = sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))
    shown = [f"{key}: {old.get(key, '<absent>')} -> {new.get(key, '<absent>')}" for key in keys[:limit]]
    return "; ".join(shown) + (f"; and {len(keys) - limit} more" if len(keys) > limit else "")


def _as_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _excluded(key: str) -> bool:
    return any(key == prefix or key.startswith(prefix + ".") for prefix in EXCLUDED)


def code_version() -> str:
    return os.environ.get(CODE_VERSION_ENV) or _checkout_version()


@lru_cache(maxsize=1)
def _checkout_version() -> str:
    try:
        commit = git("rev-parse", "HEAD", cwd=SOURCE_ROOT).strip()
        difference = git("diff", "HEAD", "--", *SOURCE_PATHS, cwd=SOURCE_ROOT)
        untracked = git("ls-files", "--others", "--exclude-standard", "--", *SOURCE_PATHS, cwd=SOURCE_ROOT).split()
    except (OSError, subprocess.SubprocessError):
        return f"bnrepro=={_package_version()}"
    if not difference and not untracked:
        return commit
    digest = hashlib.sha256(difference.encode())
    for name in sorted(untracked):
        digest.update(name.encode())
        with contextlib.suppress(OSError):  # deleted since git listed it
            digest.update((SOURCE_ROOT / name).read_bytes())
    return f"{commit}+dirty.{digest.hexdigest()[:12]}"


def _package_version() -> str:
    try:
        return metadata.version("bnrepro")
    except metadata.PackageNotFoundError:
        return "unknown"
