"""What one job does: validate, seed, build the data, network and Trainer, fit, evaluate, close.

`main` is the Hydra task function (`train.py` calls it); `train` does the work and can be called
directly with a composed config, as the tests do.
"""

import logging
import sys

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import TQDMProgressBar
from omegaconf import DictConfig

from bnrepro.config import ConfigError, validate
from bnrepro.data.errors import DatasetError
from bnrepro.module import Classifier
from bnrepro.optim import SGDRecipe
from bnrepro.tracking import JobInfo, open_run

log = logging.getLogger(__name__)

FINAL_METRICS = ("val/acc", "val/acc_top5", "val/loss")


def main(cfg: DictConfig) -> dict[str, float]:
    try:
        return train(cfg, JobInfo.from_hydra())
    except (ConfigError, DatasetError) as error:
        print(f"bnrepro: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def train(cfg: DictConfig, job: JobInfo) -> dict[str, float]:
    validate(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # missing data fails here, before a run is opened
    with open_run(cfg, job) as run:
        net = instantiate(cfg.model.net, num_classes=datamodule.num_classes)
        module = Classifier(net, recipe(cfg.optim), datamodule.num_classes)
        callbacks = [instantiate(node) for node in cfg.callbacks.values() if node is not None]
        trainer = build_trainer(cfg, run.logger, callbacks, datamodule.steps_per_batch, job.output_dir)
        run.log_params(
            {
                "global_batch_size": cfg.data.batch_size * trainer.world_size,
                "num_parameters": sum(p.numel() for p in net.parameters()),
            }
        )
        trainer.fit(module, datamodule=datamodule)
        if trainer.global_step % cfg.trainer.eval_every_n_steps:  # the last interval was cut short
            trainer.validate(module, datamodule=datamodule, verbose=False)
        final = {key: float(trainer.callback_metrics[key]) for key in FINAL_METRICS if key in trainer.callback_metrics}
    log.info("finished %s at step %d: %s", job.name, trainer.global_step, final)
    return final


def recipe(optim: DictConfig) -> SGDRecipe:
    return SGDRecipe(
        lr=optim.lr,
        momentum=optim.momentum,
        weight_decay=optim.weight_decay,
        nesterov=optim.nesterov,
        decay_rate=optim.decay_rate,
        decay_every_steps=optim.decay_every_steps,
    )


def build_trainer(cfg: DictConfig, logger, callbacks: list, steps_per_batch: int, output_dir: str) -> L.Trainer:
    """A Trainer whose intervals are counted in optimizer steps, whatever the chunk size."""
    t = cfg.trainer
    return L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
        max_steps=t.max_steps,
        # Lightning counts these in batches; a batch holds `steps_per_batch` optimizer steps.
        val_check_interval=t.eval_every_n_steps // steps_per_batch,
        check_val_every_n_epoch=None,
        log_every_n_steps=t.log_every_n_steps // steps_per_batch,
        num_sanity_val_steps=0,
        logger=logger if logger is not None else False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=t.enable_progress_bar,
        callbacks=[*callbacks, *([TQDMProgressBar(refresh_rate=max(1, 500 // steps_per_batch))] if t.enable_progress_bar else [])],
        deterministic=t.deterministic,
        default_root_dir=output_dir or None,
    )
