"""Command lines: ``ckpt-operator`` (run, crds, dev, demo) and ``kubectl-ckpt`` (the plugin)."""
