"""Compact, immutable views of Kubernetes objects: what the policies decide on.

Kopf indexes hold these instead of whole bodies, and every parse of a raw body happens here.
"""
