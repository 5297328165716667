"""Kubernetes objects the operator builds, and the one layer its API calls go through."""
