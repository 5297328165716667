"""A trainer that never ends on its own: it trains until SIGTERM, then saves and exits.

Run as a script with the store URI, or in an attempt pod without one (``CKPT_STORE`` and the
rest from the operator's environment); prints ``step <n>`` after every completed step.
"""

from __future__ import annotations

import sys

from ckpt_operator.sdk import CheckpointManager, save_on_sigterm
from tests.sdk.training import Trainer


def main(store: str | None) -> None:
    trainer = Trainer(seed=0)
    manager = CheckpointManager(store) if store else CheckpointManager.from_env()
    step = 0

    def state() -> dict[str, object]:
        return {
            "step": step,
            "model": trainer.model,
            "optimizer": trainer.optimizer,
            "scheduler": trainer.scheduler,
        }

    with save_on_sigterm(manager, state) as notice:
        while True:
            with notice.hold():  # never save a half-applied update
                trainer.step()
                step += 1
            print(f"step {step}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
