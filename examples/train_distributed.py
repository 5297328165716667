"""A small DDP trainer on CPU (gloo) using the SDK: restore, train, checkpoint, fail on purpose.

Every rank saves its own state (model, optimizer, scheduler, RNG) into one distributed
checkpoint, and on restart every rank restores its shard of the same one, so a resumed run
continues bit for bit as if it had not stopped. Run it with torchrun (or any launcher that sets
``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``)::

    CKPT_STORE=file:///tmp/ckpt-ddp FAIL_AT_STEP=50 torchrun --nproc-per-node 3 \\
        examples/train_distributed.py            # rank 0 dies before step 50
    CKPT_ATTEMPT=1 CKPT_STORE=file:///tmp/ckpt-ddp torchrun --nproc-per-node 3 \\
        examples/train_distributed.py            # resumes from step 40 on every rank

Each rank prints ``rank=R step=S loss=L`` per step (``L`` is the float's exact repr).
Environment: ``TOTAL_STEPS`` (100), ``SAVE_EVERY`` (20), ``FAIL_AT_STEP`` (exit with
``FAIL_EXIT_CODE``, default 1, before that step), ``FAIL_ON_ATTEMPT`` (0: only in that
attempt, so the next can finish), ``FAIL_RANK`` (0: which rank fails).
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ckpt_operator.sdk import CheckpointManager


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    total, every = _env_int("TOTAL_STEPS", 100), _env_int("SAVE_EVERY", 20)
    fail_at, fail_on_attempt = _env_int("FAIL_AT_STEP", -1), _env_int("FAIL_ON_ATTEMPT", 0)
    fail_rank = _env_int("FAIL_RANK", 0)
    torch.set_num_threads(1)  # one thread per rank: deterministic and fair on small hosts
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank = dist.get_rank()

    torch.manual_seed(0)  # the same initial weights on every rank
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 1))
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    data = torch.Generator().manual_seed(1234)
    x = torch.randn(4096, 16, generator=data)
    y = (x @ torch.randn(16, 1, generator=data)).tanh()
    torch.manual_seed(1000 + rank)  # each rank draws its own batches and dropout masks

    with CheckpointManager.from_env(collective_timeout_s=60) as ckpt:
        step = ckpt.restore(model=model, optimizer=optimizer, scheduler=scheduler) or 0
        logging.info("rank %d starting at step %d (attempt %d)", rank, step, ckpt.attempt)
        while step < total:
            if step + 1 == fail_at and ckpt.attempt == fail_on_attempt and rank == fail_rank:
                ckpt.wait()  # saves already queued finish: the resume point is deterministic
                logging.error(
                    "FAIL_AT_STEP=%d: rank %d exits to demonstrate a restart", fail_at, rank
                )
                return _env_int("FAIL_EXIT_CODE", 1)
            rows = torch.randint(0, len(x), (64,))
            loss = nn.functional.mse_loss(ddp(x[rows]), y[rows])
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            scheduler.step()
            step += 1
            print(f"rank={rank} step={step} loss={loss.item()!r}", flush=True)
            if step % every == 0 or step == total:
                metrics = {"loss": loss.item()}
                ckpt.save(
                    step,
                    model=model,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    metrics=metrics,
                    blocking=False,
                )
        ckpt.wait()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
