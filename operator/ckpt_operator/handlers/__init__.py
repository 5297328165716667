"""Kopf handlers: thin adapters from Kubernetes events to the pure decision modules."""

from ckpt_operator.handlers import checkpoint, trainingrun

__all__ = ["checkpoint", "trainingrun"]
