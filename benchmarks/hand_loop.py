"""The hand-written baseline: the same experiment as `train.py`, as a plain eager PyTorch loop.

Same configuration (composed by Hydra from the same overrides), same seed and therefore the same
initial weights, the same data tensors on the same device, the same sample order (each data-epoch
is `epoch_permutation(n, seed, epoch)`, as in `StepStream`), the same SGD settings and number of
steps. Batches are gathered with `index_select`, the fastest gather on the CPU (several times
faster than `inputs[index]`), so the baseline is as fast as a plain loop gets. It does the same
periodic work as the framework: the training loss is summed on the device
and read every `loop.log_every_n_steps` steps, and the test split is evaluated (loss, top-1 and
top-5 accuracy, in `data.eval_batch_size` batches) every `loop.eval_every_n_steps` steps.
It does not write checkpoints or diagnostics (framework features, counted as framework time).

    python benchmarks/hand_loop.py --out result.json experiment=mnist_fig1 norm=bn trainer.max_steps=2000

Writes the wall-clock times (time.time()) of the first step and of the end of training, and the
process CPU time in between, to `--out`.
"""

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from bnrepro.config import register_configs
from bnrepro.data.tensor_stream import epoch_permutation

CONF = Path(__file__).resolve().parents[1] / "conf"


def evaluate(net: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int) -> dict[str, float]:
    net.eval()
    loss_sum = torch.zeros((), device=inputs.device)
    top1 = torch.zeros((), device=inputs.device, dtype=torch.long)
    top5 = torch.zeros((), device=inputs.device, dtype=torch.long)
    with torch.no_grad():
        for start in range(0, len(targets), batch_size):
            x, y = inputs[start : start + batch_size], targets[start : start + batch_size]
            logits = net(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            best = logits.topk(5, dim=1).indices
            top1 += (best[:, 0] == y).sum()
            top5 += (best == y.unsqueeze(1)).any(dim=1).sum()
    net.train()
    count = len(targets)
    return {"val/loss": loss_sum.item() / count, "val/acc": top1.item() / count, "val/acc_top5": top5.item() / count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file for the timings and final metrics")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("overrides", nargs="*", help="the same Hydra overrides train.py gets")
    args = parser.parse_args()

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=args.overrides)
    device = torch.device(args.device)

    torch.manual_seed(cfg.seed)  # run.py seeds (L.seed_everything) right before building data and network
    datamodule = instantiate(cfg.data)
    datamodule.setup()  # reads the split on the CPU, applies data.binarize
    train, test = datamodule.train_split.to(device), datamodule.test_split.to(device)
    net = instantiate(cfg.model.net, num_classes=datamodule.num_classes).to(device)
    sgd, decay = cfg.optim.optimizer, cfg.optim.scheduler  # the arguments of the config's partials, by hand
    optimizer = torch.optim.SGD(
        net.parameters(), lr=sgd.lr, momentum=sgd.momentum, weight_decay=sgd.weight_decay, nesterov=sgd.nesterov
    )
    scheduler = (
        torch.optim.lr_scheduler.StepLR(optimizer, decay.every_n_steps, decay.rate)
        if decay.every_n_steps > 0 and decay.rate != 1.0
        else None
    )
    batch_size, seed = cfg.data.batch_size, cfg.data.seed
    steps, eval_every, log_every = cfg.trainer.max_steps, cfg.loop.eval_every_n_steps, cfg.loop.log_every_n_steps
    steps_per_epoch = len(train) // batch_size

    metrics: dict[str, float] = {}
    evaluations, evaluation_seconds = 0, 0.0
    loss_sum = torch.zeros((), device=device)
    first_step, first_step_cpu = time.time(), time.process_time()
    for step in range(steps):
        epoch, position = divmod(step, steps_per_epoch)
        if position == 0:
            order = epoch_permutation(len(train), seed, epoch).to(device)
        index = order[position * batch_size : (position + 1) * batch_size]
        inputs, targets = train.inputs.index_select(0, index), train.targets.index_select(0, index)
        loss = F.cross_entropy(net(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.detach()
        if (step + 1) % log_every == 0:
            metrics["train/loss"] = loss_sum.item() / log_every
            loss_sum.zero_()
        if (step + 1) % eval_every == 0:
            evaluation_start = time.time()
            metrics.update(evaluate(net, test.inputs, test.targets, cfg.data.eval_batch_size))
            evaluations, evaluation_seconds = evaluations + 1, evaluation_seconds + time.time() - evaluation_start
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_end, cpu_seconds = time.time(), time.process_time() - first_step_cpu

    record = {
        "first_step": first_step,
        "train_end": train_end,
        "cpu_seconds": cpu_seconds,
        "evaluations": evaluations,
        "evaluation_seconds": evaluation_seconds,
        "steps": steps,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "final": metrics,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record))


if __name__ == "__main__":
    main()
