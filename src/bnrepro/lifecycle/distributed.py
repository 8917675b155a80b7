"""Multi-process training: which rank a process is, and starting a job's other ranks ourselves.

Lightning's own `ddp` launcher re-runs the whole command line for ranks > 0. Inside a Hydra
multirun that command is the *sweep*, so every extra rank starts the sweep again (in another sweep
directory). `RankProcesses` instead starts ranks 1..N-1 as single runs of exactly this job: same
config name and config directories, the job's own overrides, the job's output directory. Every rank
then sees LOCAL_RANK in its environment, which tells Lightning the processes were created
externally, as with torchrun or SLURM (which need no launcher from us at all).
"""

import _thread
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

# Set by torchrun, SLURM, or `RankProcesses`: this process is one rank of a job launched from outside.
EXTERNAL_LAUNCH_ENV = ("LOCAL_RANK", "RANK", "SLURM_PROCID")


class RankFailed(RuntimeError):
    """Another rank of this job exited with an error."""


def is_ddp(strategy: str) -> bool:
    return str(strategy).startswith("ddp")


def launched_externally() -> bool:
    return any(name in os.environ for name in EXTERNAL_LAUNCH_ENV)


def processes_per_node(devices, accelerator: str) -> int:
    """How many processes one node runs for Lightning's `devices` (-1 / "auto": every visible GPU)."""
    if isinstance(devices, int) and devices > 0:
        return devices
    if not isinstance(devices, (str, int)) and len(devices) > 0:  # explicit device indices
        return len(devices)
    if str(devices) in ("-1", "auto") and accelerator in ("gpu", "cuda"):
        import torch

        return max(torch.cuda.device_count(), 1)
    return 1


def global_rank() -> int:
    """This process's global rank, from the launcher's environment (0 when not distributed)."""
    for name in ("RANK", "SLURM_PROCID"):
        if name in os.environ:
            return int(os.environ[name])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    node_rank = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", 0)))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return node_rank * local_world + local_rank


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RankProcesses:
    """Starts ranks 1..N-1 of this job as single runs of train.py; rank 0 is the current process.

    A watcher thread notices a rank that exits with an error (even before the process group forms,
    where rank 0 would otherwise wait for the full rendezvous timeout) and interrupts rank 0, which
    then ends with `RankFailed` naming the rank.
    """

    def __init__(
        self,
        num_processes: int,
        command: list[str],
        poll_seconds: float = 0.5,
        on_abandon: Callable[[str], None] = lambda reason: None,
        grace_seconds: float = 30.0,
    ):
        self.num_processes, self.command, self.poll_seconds = num_processes, command, poll_seconds
        self.on_abandon, self.grace_seconds = on_abandon, grace_seconds
        self.children: list[subprocess.Popen] = []
        self._saved_env: dict[str, str | None] = {}
        self._failure: str | None = None
        self._done = threading.Event()

    def __enter__(self) -> "RankProcesses":
        shared = {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(_free_port()),
            "WORLD_SIZE": str(self.num_processes),
            "LOCAL_WORLD_SIZE": str(self.num_processes),
            "NODE_RANK": "0",
        }
        self._set_own_env({**shared, "LOCAL_RANK": "0"})
        for rank in range(1, self.num_processes):
            env = {**os.environ, **shared, "LOCAL_RANK": str(rank)}
            self.children.append(subprocess.Popen([*self.command, f"hydra.job.name=rank{rank}"], env=env))
        log.info("started ranks 1..%d of this job (pids %s)", self.num_processes - 1, [c.pid for c in self.children])
        threading.Thread(target=self._watch, name="rank-watcher", daemon=True).start()
        return self

    def _watch(self) -> None:
        while not self._done.wait(self.poll_seconds):
            for rank, child in enumerate(self.children, start=1):
                code = child.poll()
                if code not in (None, 0):
                    self._failure = (
                        f"rank {rank} of this job exited with code {code} (see its log in the job directory)"
                    )
                    log.error(self._failure)
                    self._terminate_children()
                    _thread.interrupt_main()  # rank 0 may be blocked waiting for the lost rank
                    if not self._done.wait(self.grace_seconds):
                        # Blocked inside a C++ rendezvous, where no Python exception can reach it:
                        # record the failure truthfully, then leave.
                        log.error("rank 0 did not stop within %.0f s; exiting", self.grace_seconds)
                        self.on_abandon(self._failure)
                        os._exit(1)
                    return

    def _terminate_children(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.terminate()

    def _set_own_env(self, values: dict[str, str]) -> None:
        for key, value in values.items():
            self._saved_env[key] = os.environ.get(key)
            os.environ[key] = value

    def __exit__(self, kind, error, traceback) -> None:
        self._done.set()
        _leave_process_group()  # the next job of a sweep runs in this same process with a new group
        try:
            if error is not None:
                self._terminate_children()
            failed = {rank: code for rank, code in self._wait().items() if code != 0}
            if self._failure is not None:  # the watcher interrupted us: report the cause, not the interrupt
                raise RankFailed(self._failure) from error
            if failed and error is None:
                raise RankFailed(f"rank(s) {sorted(failed)} of this job exited with code(s) {sorted(failed.values())}")
        finally:
            for key, value in self._saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def _wait(self, timeout: float = 300.0) -> dict[int, int]:
        codes = {}
        for rank, child in enumerate(self.children, start=1):
            try:
                codes[rank] = child.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                codes[rank] = child.wait()
        return codes


def _leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_command(config_name: str, config_dirs: list[str], overrides: list[str], output_dir: str) -> list[str]:
    """The command that runs one more rank of this job: this job alone, as a single run in its directory."""
    dirs = [argument for directory in config_dirs for argument in ("--config-dir", directory)]
    return [
        sys.executable,
        "-m",
        "bnrepro",  # = train.py, also where bnrepro is installed without its checkout
        "--config-name",
        config_name,
        *dirs,
        *overrides,
        f'hydra.run.dir="{output_dir}"',  # quoted: a sweep job's directory name holds '=' and ','.
        "hydra.output_subdir=null",  # rank 0 writes the job's .hydra/ files
    ]


def machine_devices(accelerator: str) -> int:
    """What parallel jobs share: GPUs on a GPU run, CPU cores otherwise."""
    if accelerator in ("gpu", "cuda"):
        import torch

        return torch.cuda.device_count()
    return os.cpu_count() or 1


def oversubscription(parallel_jobs: int, devices, accelerator: str) -> str | None:
    """Why `parallel_jobs` concurrent jobs of `devices` processes each would not fit this machine, if they don't."""
    needed = parallel_jobs * processes_per_node(devices, accelerator)
    available = machine_devices(accelerator)
    if parallel_jobs > 1 and needed > available:
        unit = "GPUs" if accelerator in ("gpu", "cuda") else "CPU cores"
        return (
            f"{parallel_jobs} parallel jobs x trainer.devices={devices} need {needed} {unit}, this machine has "
            f"{available}: lower hydra.launcher.n_jobs or trainer.devices"
        )
    return None


class DeviceSlot:
    """Claims one of `slots` disjoint GPU ranges for this job while it runs (a file lock per slot).

    Parallel jobs of a sweep may finish in any order, so a job's slot cannot be derived from its
    number; the lock files in the sweep directory hand each running job a free one.
    """

    def __init__(self, lock_dir: str, slots: int, per_job: int):
        self.lock_dir, self.slots, self.per_job = Path(lock_dir), slots, per_job
        self._handle = None
        self.devices: list[int] = []

    def __enter__(self) -> "DeviceSlot":
        import fcntl

        self.lock_dir.mkdir(parents=True, exist_ok=True)
        for slot in range(self.slots):
            handle = open(self.lock_dir / f"slot{slot}.lock", "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            self._handle, self.devices = handle, list(range(slot * self.per_job, (slot + 1) * self.per_job))
            return self
        raise RuntimeError(f"all {self.slots} device slots in {self.lock_dir} are taken")

    def __exit__(self, *exc_info) -> None:
        if self._handle is not None:
            self._handle.close()  # closing releases the lock
