"""Test helpers for code built on trainkit (see :class:`LocalCluster`)."""

from trainkit.testing._local_cluster import LocalCluster

__all__ = ["LocalCluster"]
