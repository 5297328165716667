"""``kubectl ckpt``: list, describe, verify and delete checkpoints; explain resume and GC.

``commands`` wires typer to ``report`` (every verdict from the operator's own policies, on views
of the listed objects), ``cluster`` (the API calls), ``targets`` (what a command-line target
names), ``manifests`` (reading a manifest from the store) and ``render``/``output`` (printing).
"""

from ckpt_operator.cli.plugin.commands import app

__all__ = ["app"]
