"""Where the configs are: conf/ and sweeps/, the checkout's top-level folders, shipped inside the installed
package as bnrepro/conf and bnrepro/sweeps (setup.py). No side effects: importable by tests and tools."""

from pathlib import Path

CONFIG_DIR_FLAGS = ("-cd", "--config-dir")


def shipped(folder: str) -> Path:
    """conf/ or sweeps/: inside the installed package (a wheel), else the checkout's top-level folder
    (the source tree: an editable install, or PYTHONPATH=src)."""
    installed = Path(__file__).resolve().parent / folder
    return installed if installed.is_dir() else Path(__file__).resolve().parents[2] / folder


def with_sweeps(argv: list[str]) -> list[str]:
    """argv plus `--config-dir <sweeps>` when it names no config directory (Hydra takes one)."""
    if any(arg in CONFIG_DIR_FLAGS or arg.startswith("--config-dir=") for arg in argv[1:]):
        return argv
    return [argv[0], "--config-dir", str(shipped("sweeps")), *argv[1:]]
