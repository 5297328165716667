"""ckpt-operator: resume training from the newest valid checkpoint; delete storage safely."""

__version__ = "0.1.0"
