"""A tiny but real trainer using the SDK: restore, train, checkpoint, fail on purpose.

Inside a TrainingRun the operator sets ``CKPT_*``; locally only ``CKPT_STORE`` is needed::

    CKPT_STORE=file:///tmp/ckpt-demo FAIL_AT_STEP=70 python examples/train.py   # dies at 70
    CKPT_STORE=file:///tmp/ckpt-demo python examples/train.py                   # resumes at 60

Environment: ``TOTAL_STEPS`` (200), ``SAVE_EVERY`` (20), ``EXPORT_EVERY`` (0 = never; weights
for inference), ``FAIL_AT_STEP`` (exit with ``FAIL_EXIT_CODE``, default 1, before that step, in
the attempts listed in ``FAIL_ON_ATTEMPT`` only, comma-separated, default 0, so a later attempt
can finish).
"""

from __future__ import annotations

import logging
import os
import sys

import torch
from torch import nn

from ckpt_operator.sdk import CheckpointManager

LAYERS = [16, 64, 1]


def build_model(layers: list[int]) -> nn.Sequential:
    """The demo's MLP; examples/consumer.py rebuilds it from the exported config.json."""
    return nn.Sequential(
        nn.Linear(layers[0], layers[1]), nn.ReLU(), nn.Dropout(0.1), nn.Linear(layers[1], layers[2])
    )


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    total, every = _env_int("TOTAL_STEPS", 200), _env_int("SAVE_EVERY", 20)
    export_every, fail_at = _env_int("EXPORT_EVERY", 0), _env_int("FAIL_AT_STEP", -1)
    fail_on = {int(a) for a in (os.environ.get("FAIL_ON_ATTEMPT") or "0").split(",")}

    # Under torchrun (examples/trainingrun-multinode.yaml) DDP keeps the replicas equal. Every
    # rank calls restore and save alike: under a process group they are collective (each rank
    # writes its own state into one checkpoint, rank 0 commits it), so a save from rank 0 alone
    # would wait for the others until the SDK's collective timeout. Weights exports are
    # written by rank 0 only.
    distributed = _env_int("WORLD_SIZE", 1) > 1
    if distributed:
        torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank() if distributed else 0

    torch.manual_seed(0)
    model = build_model(LAYERS)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    data = torch.Generator().manual_seed(1234)
    x = torch.randn(4096, 16, generator=data)
    y = (x @ torch.randn(16, 1, generator=data)).tanh()

    with CheckpointManager.from_env() as ckpt:
        step = ckpt.restore(model=model, optimizer=optimizer, scheduler=scheduler) or 0
        logging.info("starting at step %d (attempt %d, rank %d)", step, ckpt.attempt, rank)
        net = nn.parallel.DistributedDataParallel(model) if distributed else model
        while step < total:
            if step + 1 == fail_at and ckpt.attempt in fail_on:
                logging.error("FAIL_AT_STEP=%d: exiting to demonstrate a restart", fail_at)
                return _env_int("FAIL_EXIT_CODE", 1)
            rows = torch.randint(0, len(x), (64,))
            loss = nn.functional.mse_loss(net(x[rows]), y[rows])
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            scheduler.step()
            step += 1
            if step % every == 0 or step == total:  # on every rank: save is collective
                ckpt.save(
                    step,
                    model=model,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    metrics={"loss": loss.item()},
                    blocking=False,
                )
                logging.info("step %d loss %.5f: checkpoint queued", step, loss.item())
            if rank == 0 and export_every and step % export_every == 0:  # not collective
                ckpt.export_weights(model, step, config={"layers": LAYERS})
        ckpt.wait()
    if distributed:
        torch.distributed.destroy_process_group()
    logging.info("finished %d steps, final loss %.5f", total, loss.item())
    return 0


if __name__ == "__main__":
    sys.exit(main())
