"""Kopf handlers: thin adapters from Kubernetes events to the pure decision modules.

Importing this package registers every handler with Kopf.
"""

from ckpt_operator.handlers import checkpoint, consumers, pods, store_scan, trainingrun

__all__ = ["checkpoint", "consumers", "pods", "store_scan", "trainingrun"]
