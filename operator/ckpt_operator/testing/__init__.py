"""Test support: a real local control plane (envtest-style), the operator as a process, S3.

Use it in your own tests with ``pytest_plugins = ["ckpt_operator.testing.pytest_plugin"]``.
"""
