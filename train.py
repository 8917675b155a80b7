"""Train one configuration, or sweep many with -m: `python train.py -m norm=bn,none optim=lr_x5,lr_x30`."""

from bnrepro.lifecycle import fast_exit

fast_exit.install()  # first, so it runs after every other exit handler (see bnrepro.lifecycle.fast_exit)

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from bnrepro.config import register_configs  # noqa: E402

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def train(cfg: DictConfig) -> dict[str, float]:
    # torch and Lightning load only once the config has composed: a mistyped option fails in a second.
    from bnrepro.run import main

    return main(cfg)


if __name__ == "__main__":
    fast_exit.run(train)
