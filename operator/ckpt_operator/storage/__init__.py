"""Checkpoint storage: the confined store, its layout, the manifest and its verifier.

Shared by the operator and the SDK, so both name, write and check checkpoints the same way.
"""
