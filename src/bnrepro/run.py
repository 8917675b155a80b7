"""What one job does: validate, seed, build the data, network and Trainer, fit, evaluate, close.

`main` is the Hydra task function (`train.py` calls it); `train` does the work and can be called
directly with a composed config, as the tests do.
"""

import contextlib
import dataclasses
import logging
import os
import signal
import sys
import warnings
from collections.abc import Callable

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from bnrepro.callbacks.checkpointing import (
    AtomicCheckpointIO,
    CheckpointError,
    StepCheckpoint,
    checkpoint_dir,
    last_checkpoint,
)
from bnrepro.callbacks.divergence import Diverged
from bnrepro.callbacks.population import PopulationEvaluation
from bnrepro.callbacks.progress import StepProgressBar
from bnrepro.config import ConfigError, Inference, validate, validate_machine
from bnrepro.data.errors import DatasetError, require_batch_fits
from bnrepro.data.in_memory import InMemoryDataModule
from bnrepro.lifecycle.claim import job_claim
from bnrepro.lifecycle.distributed import (
    DeviceSlot,
    RankProcesses,
    global_rank,
    is_ddp,
    launched_externally,
    oversubscription,
    processes_per_node,
    rank_command,
)
from bnrepro.lifecycle.identity import JobIdentity, job_identity
from bnrepro.lifecycle.interruption import (
    PREEMPTION_SIGNAL,
    GracefulStop,
    RunInterrupted,
    hand_preemption_to_scheduler,
    held_signal,
    interruptible,
)
from bnrepro.lifecycle.preflight import OutputDirectoryError, check_writable
from bnrepro.lifecycle.resume import ResumeError, StartPlan, plan_start
from bnrepro.lifecycle.sweep_stop import mark_stopped, requested_stop
from bnrepro.messages import cause, first_line
from bnrepro.module import Classifier
from bnrepro.nn.batchnorm import batchnorm_classes
from bnrepro.nn.sync_batchnorm import convert_sync_batchnorm
from bnrepro.tracking.job import JobInfo
from bnrepro.tracking.liveness import mark_lost_runs
from bnrepro.tracking.run import is_tracked, open_run, record_skipped
from bnrepro.tracking.store import TrackingError, open_store
from bnrepro.tracking.sweep import JobFailed
from bnrepro.tracking.tags import EVAL_EXAMPLES_PARAM, tracking_uri

log = logging.getLogger(__name__)

FINAL_METRICS = ("val/acc", "val/acc_top5", "val/loss")


# Input the user can fix: one line naming the problem and the fix, exit code 2, no run recorded as a success.
BAD_INPUT = (ConfigError, DatasetError, TrackingError, CheckpointError, ResumeError, OutputDirectoryError)


# Library messages that say nothing about this run; hiding them keeps real warnings visible.
HARMLESS_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",  # Lightning internals on torch >= 2.10
    r"The number of training batches .* is smaller than the logging interval.*",  # short runs
)


def quiet_library_chatter() -> None:
    for pattern in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def main(cfg: DictConfig) -> dict[str, float] | JobFailed:
    """One job. A failure ends a single run's process (exit 2 for bad input, the error otherwise); in a
    sweep it fails only its job (`JobFailed`) and the sweep goes on. A signal stops either."""
    quiet_library_chatter()
    job = JobInfo.from_hydra()
    name = job.name or "job"
    try:
        with interruptible():  # SIGINT/SIGTERM/SIGUSR2 -> RunInterrupted: the run ends KILLED, not stuck RUNNING
            result = train(cfg, job)
            late = held_signal()  # arrived while the finished run was being closed
    except BAD_INPUT as error:
        print(f"bnrepro: error: {first_line(error)}", file=sys.stderr)
        if job.sweep_id:
            return JobFailed(name, cause(error), exit_code=2)
        raise SystemExit(2) from None
    except Exception as error:
        if not job.sweep_id:
            raise  # Hydra prints it, with its traceback
        log.exception("%s failed", name)  # the traceback, in the job's log file too
        print(f"bnrepro: error: {name} failed: {cause(error)}; the sweep goes on", file=sys.stderr)
        return JobFailed(name, cause(error), exit_code=1)
    except RunInterrupted as stop:
        hint = (
            f"; continue it with the same command plus resume={stop.resume_with}"
            if getattr(stop, "resume_with", None)
            else ""
        )
        if global_rank() == 0:  # every rank stops at the same step; one says so
            print(f"bnrepro: {stop}{hint}", file=sys.stderr)
        if job.sweep_id and stop.signum != PREEMPTION_SIGNAL:  # (a pre-empted job is requeued and resumes)
            stop_the_sweep(job, stop.signum)
        hand_preemption_to_scheduler(stop.signum)  # under submitit: requeued, resumes into the same run
        raise SystemExit(stop.exit_code) from None
    if late is not None:
        report_signal_after_finish(late, job)
    return result


def stop_the_sweep(job: JobInfo, signum: int) -> None:
    """A job of a sweep was stopped by a signal: the sweep stops too (its queued jobs do not start). A job in a
    parallel sweep's worker passes the signal to the sweep's process, so that it stops its other running jobs
    cleanly (`lifecycle.sweep_stop`) before joblib ends the workers."""
    mark_stopped(job.sweep_id, signum)
    if job.parallel_jobs > 1:  # joblib runs the jobs in worker processes, children of the sweep's process
        os.kill(os.getppid(), signum)


def report_signal_after_finish(signum: int, job: JobInfo) -> None:
    """A signal that came once training had ended: the run closed FINISHED, and the exit status says so
    (0); in a sweep the process stops, as asked, before its next job (the sweep ends KILLED)."""
    name = signal.Signals(signum).name
    if not job.sweep_id:
        print(f"bnrepro: received {name} after training had finished; the run is recorded FINISHED", file=sys.stderr)
        return
    print(
        f"bnrepro: received {name} after {job.name or 'a job'} had finished (its run is recorded FINISHED); "
        "the sweep stops here: re-run the same command to run the rest",
        file=sys.stderr,
    )
    raise SystemExit(128 + signum)


def train(cfg: DictConfig, job: JobInfo) -> dict[str, float]:
    validate(cfg)
    validate_machine(cfg)  # a GPU accelerator on a machine without one
    too_big = oversubscription(job.parallel_jobs, cfg.trainer.devices, cfg.trainer.accelerator)
    if too_big:
        raise ConfigError(too_big)
    identity = job_identity(cfg)
    if is_tracked(cfg):
        # An unusable store fails now, naming its URI; runs whose process died are closed FAILED
        # ("lost", each judged by its own recorded heartbeat settings) before this job looks up runs to resume or skip.
        mark_lost_runs(open_store(tracking_uri(cfg.logger.tracking_uri)))
    # Rank 0 claims the job's directory: an identical command started at the same moment waits, then skips it.
    with job_claim(job.output_dir if global_rank() == 0 else None):
        stopped_by = requested_stop(job.sweep_id)  # a queued job of a stopped parallel sweep: no run opened
        if stopped_by is not None:
            raise RunInterrupted(stopped_by)
        return start(cfg, job, identity)


def start(cfg: DictConfig, job: JobInfo, identity: JobIdentity) -> dict[str, float]:
    """Decide how the job starts (fresh, resumed, skipped: `lifecycle.resume`), then train it."""
    plan = plan_start(cfg, job, identity)
    if plan.start == "skipped":
        return skip(cfg, job, plan)
    output_dir = plan.output_dir or job.output_dir
    if output_dir and global_rank() == 0:
        check_writable(checkpoint_dir(output_dir))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # missing data fails here, before a run is opened
    check_batch_fits(cfg, datamodule)
    if cfg.norm.inference == Inference.population and not isinstance(datamodule, InMemoryDataModule):
        # PopulationEvaluation draws its mini-batches from an in-memory training split.
        raise ConfigError(
            "norm.inference=population needs an in-memory training split (data=mnist, mnist_mini, fashion_mnist); "
            f"{type(datamodule).__name__} feeds batches through a DataLoader: use norm.inference=running"
        )
    ddp = is_ddp(cfg.trainer.strategy)
    if ddp:
        # DDP syncs gradients only in the backward that follows a forward through its wrapper,
        # so each Trainer batch must hold exactly one optimizer step.
        datamodule.steps_per_batch = 1
    # A resumed plan names the run to reopen; a fresh one has no run id.
    with open_run(cfg, job, identity, plan.run_id) as run, job_processes(cfg, ranks_job(job, plan), run.abandon):
        callbacks = [instantiate(node) for node in cfg.callbacks.values() if node is not None]
        if cfg.norm.inference == Inference.population:
            callbacks.append(PopulationEvaluation(cfg.norm.population_batches, cfg.norm.population_at, cfg.seed))
        callbacks = prepare_checkpointing(callbacks, plan, run.run_id, identity, output_dir)
        callbacks = [*callbacks, *run.callbacks(), GracefulStop()]
        trainer = build_trainer(cfg, run.logger, callbacks, datamodule.steps_per_batch, output_dir)
        net = instantiate(cfg.model.net, num_classes=datamodule.num_classes)
        if ddp and cfg.norm.sync:  # mini-batch statistics over all replicas (Algorithm 1 on the global batch)
            net = convert_sync_batchnorm(net, trainer.strategy.root_device.type)
        if cfg.data.get("channels_last", False):  # the data arrives NHWC-strided: keep the convs in that layout
            net = net.to(memory_format=torch.channels_last)
        if cfg.loop.compile:
            net.compile()  # in place: checkpoints and diagnostics see the same module names
        optimizer, scheduler = instantiate(cfg.optim.optimizer), instantiate(cfg.optim.scheduler)
        module = Classifier(net, optimizer, datamodule.num_classes, scheduler=scheduler)
        run.log_params(
            {
                "global_batch_size": cfg.data.batch_size * trainer.world_size,
                "num_parameters": sum(p.numel() for p in net.parameters()),
                "batchnorm_class": batchnorm_classes(net),
            }
        )
        try:
            # Lightning's own restore: weights, optimizer, schedules, loop counters and the callbacks' state.
            resume_path = last_checkpoint(output_dir) if plan.start == "resumed" else None
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume_path, weights_only=True)
        except Diverged as diverged:  # a result, not a crash: the run ends FINISHED, the sweep goes on
            run.mark_diverged(diverged.step, diverged.loss, str(diverged))
            log.warning("%s: %s (tagged bnrepro.outcome=diverged)", job.name, diverged)
            return {"diverged_step": float(diverged.step)}
        except RunInterrupted as stop:
            stop.resume_with = run.run_id or (output_dir if last_checkpoint(output_dir or ".") else None)
            raise
        cut_short = trainer.global_step % cfg.loop.eval_every_n_steps  # the last interval was cut short
        if cut_short or FINAL_METRICS[0] not in trainer.callback_metrics:  # (or resumed after the last evaluation)
            trainer.validate(module, datamodule=datamodule, verbose=False)
        final = {key: float(trainer.callback_metrics[key]) for key in FINAL_METRICS if key in trainer.callback_metrics}
        run.params_at_close[EVAL_EXAMPLES_PARAM] = module.eval_examples  # (written with the final status)
    log.info("finished %s at step %d: %s", job.name, trainer.global_step, final)
    return final


def check_batch_fits(cfg: DictConfig, datamodule) -> None:
    """A batch larger than an in-memory training split fails before a run is recorded (its size is known
    once the split is read; DataLoader-fed data checks it when its loader is built)."""
    if isinstance(datamodule, InMemoryDataModule):
        train_split, _ = datamodule.cpu_splits()
        world_size = processes_per_node(cfg.trainer.devices, cfg.trainer.accelerator) * cfg.trainer.num_nodes
        require_batch_fits(cfg.data.batch_size, len(train_split), world_size)


def skip(cfg: DictConfig, job: JobInfo, plan: StartPlan) -> dict[str, float]:
    """An identical run already FINISHED: count it in this sweep instead of training again."""
    record_skipped(cfg, job, plan.run_id)  # (only the tracking process writes)
    message = f"skipped {job.name or 'run'}: identical run {plan.run_id} already FINISHED (rerun=true trains it again)"
    log.info(message)
    return {}


def prepare_checkpointing(
    callbacks: list, plan: StartPlan, run_id: str | None, identity: JobIdentity, output_dir: str
) -> list:
    """Tell the checkpoint callback what to store; without a run directory, drop it."""
    checkpointing = [c for c in callbacks if isinstance(c, StepCheckpoint)]
    if plan.start == "resumed" and not checkpointing:
        raise ConfigError(
            "resuming needs the checkpoint callback, but callbacks.checkpoint is null: remove that override"
        )
    if not output_dir:  # a direct train() call without a run directory: nowhere to put checkpoints
        return [c for c in callbacks if not isinstance(c, StepCheckpoint)]
    for callback in checkpointing:
        callback.meta = {
            "run_id": run_id or "",
            "identity": identity.digest,
            "code_version": identity.code_version,
            "config": identity.config,
            "output_dir": str(output_dir),
        }
    return callbacks


def ranks_job(job: JobInfo, plan: StartPlan) -> JobInfo:
    """The job as ranks 1..N-1 run it: rank 0's start decision made explicit, so all ranks agree."""
    kept = [o for o in job.overrides if not o.lstrip("+~").startswith(("resume=", "rerun="))]
    quoted = str(plan.output_dir).replace("\\", "\\\\").replace("'", "\\'")  # sweep dirs hold '=' and ','
    decided = [f"resume='{quoted}'"] if plan.start == "resumed" else ["rerun=true"]
    return dataclasses.replace(job, overrides=[*kept, *decided])


def job_processes(cfg: DictConfig, job: JobInfo, on_abandon: Callable[[str], None]) -> contextlib.ExitStack:
    """This job's share of the machine: its own GPUs when sweep jobs run in parallel, and its other ranks
    (started by us unless torchrun/SLURM, or we, already did: see `distributed`)."""
    t, stack, overrides = cfg.trainer, contextlib.ExitStack(), list(job.overrides)
    try:
        if t.accelerator in ("gpu", "cuda") and job.parallel_jobs > 1 and not launched_externally():
            per_job = processes_per_node(t.devices, t.accelerator)
            slot = stack.enter_context(DeviceSlot(f"{job.sweep_id}/.device_slots", job.parallel_jobs, per_job))
            t.devices = slot.devices
            overrides.append(f"trainer.devices=[{','.join(map(str, slot.devices))}]")
        count = processes_per_node(t.devices, t.accelerator)
        if is_ddp(t.strategy) and count > 1 and t.num_nodes == 1 and not launched_externally():
            command = rank_command(job.config_name, job.config_dirs, overrides, job.output_dir)
            stack.enter_context(RankProcesses(count, command, on_abandon=on_abandon))
    except BaseException:
        stack.close()
        raise
    return stack


def build_trainer(cfg: DictConfig, logger, callbacks: list, steps_per_batch: int, output_dir: str) -> L.Trainer:
    """The `trainer` group's arguments plus the loop's intervals, which the config counts in optimizer steps."""
    progress_bar = [StepProgressBar()] if cfg.trainer.enable_progress_bar else []  # in optimizer steps
    return L.Trainer(
        **OmegaConf.to_container(cfg.trainer, resolve=True),
        # Lightning counts these in batches; a batch holds `steps_per_batch` optimizer steps.
        val_check_interval=cfg.loop.eval_every_n_steps // steps_per_batch,
        check_val_every_n_epoch=None,
        log_every_n_steps=cfg.loop.log_every_n_steps // steps_per_batch,
        num_sanity_val_steps=0,
        logger=logger if logger is not None else False,
        enable_checkpointing=False,
        plugins=[AtomicCheckpointIO()],  # StepCheckpoint's files: atomic writes, weights_only reads
        enable_model_summary=False,
        callbacks=[*callbacks, *progress_bar],
        default_root_dir=output_dir or None,
    )
