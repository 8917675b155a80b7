"""Covariate-shift diagnostics: the paper's Figure 1(b,c).

Sec. 4.1 follows "one typical activation from the last hidden layer" over training and plots the
{15, 50, 85}th percentiles of the input to its sigmoid, in the plain network and in the
batch-normalized one (where that input is BN's output). `CovariateShiftDiagnostics` records
exactly that at every evaluation point:

* the activation site is whatever the model declares: `net.diagnostic_sites()` (forward order,
  the last entry is the last hidden layer) -- never a guess from module order;
* a fixed, seeded set of units of that site is followed (a channel is a unit for (N, C, H, W)
  outputs, pooled over N, H and W), the same units in every run that shares ``unit_seed``;
* their outputs are gathered over the whole evaluation set, the percentiles are taken on the
  device under ``no_grad``, and logged against the optimizer step as
  ``diag/<site>/u<unit>/p<q>`` through the trainer's logger.

The forward hook exists only between the start and the end of an evaluation epoch, so training
steps pay nothing.
"""

from collections.abc import Sequence

import lightning as L
import torch
from torch import Tensor, nn

# torch.quantile refuses inputs above 2**24 elements; larger samples use an equivalent sort.
QUANTILE_MAX_ELEMENTS = 2**24


def compute_percentiles(values: Tensor, qs: Sequence[float]) -> Tensor:
    """Percentiles (0..100) of every row of `values` (U, N) -> (U, len(qs)), numpy's default 'linear' method."""
    fractions = torch.tensor([q / 100.0 for q in qs], dtype=values.dtype, device=values.device)
    if values.numel() <= QUANTILE_MAX_ELEMENTS:
        return torch.quantile(values, fractions, dim=1).T
    ordered = values.sort(dim=1).values
    position = fractions * (values.shape[1] - 1)
    low, high = position.floor().long(), position.ceil().long()
    weight = position - low
    return ordered[:, low] + (ordered[:, high] - ordered[:, low]) * weight


def unit_columns(output: Tensor, units: Tensor) -> Tensor:
    """The chosen units of one batch's output as (U, samples): (N, C) -> (U, N); (N, C, H, W) -> (U, N*H*W)."""
    chosen = output.detach().index_select(1, units)
    return chosen.transpose(0, 1).reshape(len(units), -1).float()


def choose_units(num_units: int, count: int, seed: int) -> Tensor:
    """`count` distinct unit indices out of `num_units`, fixed by `seed`, in increasing order."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(num_units, generator=generator)[: min(count, num_units)].sort().values


def declared_sites(pl_module: nn.Module) -> dict[str, nn.Module]:
    """The model's own `diagnostic_sites()`: on the LightningModule itself or on its `net`."""
    for candidate in (pl_module, getattr(pl_module, "net", None)):
        if candidate is not None and hasattr(candidate, "diagnostic_sites"):
            sites = candidate.diagnostic_sites()
            if sites:
                return sites
    raise TypeError(
        f"{type(pl_module).__name__} declares no activation sites: its network must implement "
        "diagnostic_sites() -> dict[name, module] (see models/mlp.py), or disable the callback "
        "with callbacks.diagnostics=null"
    )


class CovariateShiftDiagnostics(L.Callback):
    """At every evaluation, percentiles of the nonlinearity input of a few fixed units (Fig. 1b/c)."""

    def __init__(
        self,
        units: int = 3,
        percentiles: Sequence[float] = (15, 50, 85),
        unit_seed: int = 0,
        site: str | None = None,
    ):
        if units < 1:
            raise ValueError(f"units must be >= 1, got {units}")
        if not all(0 <= q <= 100 for q in percentiles):
            raise ValueError(f"percentiles must lie in [0, 100], got {list(percentiles)}")
        self.num_units, self.qs, self.unit_seed = units, tuple(percentiles), unit_seed
        self.site = site  # None: the last declared site, i.e. the last hidden layer
        self.units: Tensor | None = None
        self._site_name: str | None = None
        self._handle = None
        self._batches: list[Tensor] = []

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        name, module = self._resolve_site(pl_module)
        self._site_name, self._batches = name, []
        self._handle = module.register_forward_hook(self._record)

    def _resolve_site(self, pl_module: L.LightningModule) -> tuple[str, nn.Module]:
        sites = declared_sites(pl_module)
        name = self.site if self.site is not None else list(sites)[-1]
        if name not in sites:
            raise KeyError(f"diagnostics site {name!r} is not among the model's sites: {', '.join(sites)}")
        return name, sites[name]

    def _record(self, module: nn.Module, inputs, output: Tensor) -> None:
        if self.units is None:
            self.units = choose_units(output.shape[1], self.num_units, self.unit_seed)
        if self.units.device != output.device:
            self.units = self.units.to(output.device)
        with torch.no_grad():
            self._batches.append(unit_columns(output, self.units))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._handle is None:
            return
        self._remove_hook()
        if not self._batches:
            return
        with torch.no_grad():
            values = self._gather(trainer, torch.cat(self._batches, dim=1))
            table = compute_percentiles(values, self.qs).cpu()
        self._batches = []
        metrics = self.metrics(table)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def metrics(self, table: Tensor) -> dict[str, float]:
        """{'diag/<site>/u<unit>/p<q>': value} for a (units, percentiles) table."""
        return {
            f"diag/{self._site_name}/u{int(unit)}/p{q:g}": float(table[row, col])
            for row, unit in enumerate(self.units.tolist())
            for col, q in enumerate(self.qs)
        }

    @staticmethod
    def _gather(trainer: L.Trainer, values: Tensor) -> Tensor:
        """Every rank's samples (ranks may hold different numbers of them), concatenated.

        With a sharded evaluation set (DistributedSampler) this is the whole set; a loader that gives
        every rank the whole set repeats it world_size times, which leaves the percentiles close to,
        but not exactly, those of one copy."""
        if trainer.world_size == 1:
            return values
        counts = trainer.strategy.all_gather(torch.tensor(values.shape[1], device=values.device))
        padded = values.new_zeros(values.shape[0], int(counts.max()))
        padded[:, : values.shape[1]] = values
        gathered = trainer.strategy.all_gather(padded)  # (world, U, max_count)
        return torch.cat([gathered[rank, :, : int(count)] for rank, count in enumerate(counts)], dim=1)

    def _remove_hook(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._remove_hook()
        self._batches = []
