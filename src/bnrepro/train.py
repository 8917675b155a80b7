"""Train one configuration, or sweep many with -m: the checkout's `train.py`, the installed `bnrepro-train`
and `python -m bnrepro` all run `main`.

The configs are conf/ and sweeps/: the top-level folders of the checkout, shipped inside the installed
package as bnrepro/conf and bnrepro/sweeps (setup.py). sweeps/ is on Hydra's search path unless the command
names a --config-dir of its own, so `bnrepro-train -m -cn mnist_fig1` runs a paper sweep anywhere.
"""

from bnrepro.lifecycle import fast_exit

fast_exit.install()  # first, so it runs after every other exit handler (see bnrepro.lifecycle.fast_exit)

import sys  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from bnrepro.config import register_configs  # noqa: E402
from bnrepro.shipped import shipped, with_sweeps  # noqa: E402

register_configs()


@hydra.main(version_base="1.3", config_path=str(shipped("conf")), config_name="config")
def train(cfg: DictConfig) -> dict[str, float]:
    # torch and Lightning load only once the config has composed: a mistyped option fails in a second.
    from bnrepro.run import main as run_job

    return run_job(cfg)


def main() -> None:
    sys.argv = with_sweeps(sys.argv)
    fast_exit.run(train)
