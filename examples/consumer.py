"""A small inference loop on the SDK: serve the newest Ready weights of a run.

Every ``POLL_SECONDS`` (30) it asks for the newest Ready weights export (examples/train.py
writes them with ``EXPORT_EVERY``), loads a new one into a fresh model, and reports the step it
serves only once that load succeeded: the operator keeps every checkpoint a consumer has not
moved past, so a failed load leaves the previous weights both served and protected. The report
is repeated every poll as the pod's heartbeat. Inside a cluster see examples/consumer.yaml;
locally, after ``EXPORT_EVERY=20 CKPT_STORE=file:///tmp/ckpt-demo python examples/train.py``::

    CKPT_STORE=file:///tmp/ckpt-demo CKPT_RUN=local MAX_POLLS=1 python examples/consumer.py

``MAX_POLLS`` (0 = forever) ends the loop, exiting 1 if nothing was ever loaded.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import torch
from torch import nn

from ckpt_operator.sdk import Consumer
from train import build_model


def build(config: dict[str, Any]) -> nn.Module:
    """A fresh model for an export, from its ``config.json``."""
    return build_model(config["layers"]).eval()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    poll = float(os.environ.get("POLL_SECONDS") or 30)
    max_polls = int(os.environ.get("MAX_POLLS") or 0)
    consumer = Consumer.from_env()
    polls = 0
    while True:
        ref = consumer.latest()
        if ref is not None and ref != consumer.loaded:
            # consumer.loaded moves to ref only once the model holds its weights
            served = consumer.loaded.step if consumer.loaded else None
            try:
                model = consumer.load_model(build, ref)
            except Exception:  # corrupt, deleted meanwhile, wrong shape: keep serving the old
                logging.exception("cannot load step %d; still serving %s", ref.step, served)
            else:
                with torch.no_grad():
                    probe = model(torch.ones(1, 16)).item()
                logging.info("serving step %d (probe output %.5f)", ref.step, probe)
        if consumer.loaded is not None:
            consumer.report_loaded()  # the step of consumer.loaded; also the heartbeat
        polls += 1
        if max_polls and polls >= max_polls:
            return 0 if consumer.loaded is not None else 1
        time.sleep(poll)


if __name__ == "__main__":
    sys.exit(main())
