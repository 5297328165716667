"""The decisions, as pure functions of compact views and the time they are given.

Nothing here reads the clock, calls the Kubernetes API or touches storage, so every decision
(which checkpoint an attempt resumes from, what a failure means, what may be deleted, what
retention expires) is unit-tested without a cluster and gives the same answer after a crash.
"""
