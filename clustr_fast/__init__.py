"""clustr_fast: fused kernels for clustering-based robust training (ClusTR).

Public API (see README.md and docs/architecture.md): distances, Magnet loss, soft
nearest-cluster classification (Eq. 4), the certified radius of Theorem 1,
k-means, and backend selection.
"""
from . import nn  # noqa: F401  (clustr_fast.nn.MagnetLoss, SoftClusterHead)
from . import _backend
from ._backend import backends, use_backend
from .kmeans import kmeans_per_group
from .ops.certified_radius import certified_radius
from .ops.cluster_means import cluster_means, cluster_variance
from .ops.kmeans import kmeans_assign, kmeans_plusplus, kmeans_update
from .ops.magnet_loss import magnet_loss, magnet_loss_batch
from .ops.pairwise_sqdist import pairwise_sqdist
from .ops.soft_cluster_logits import soft_cluster_logits, soft_cluster_predict

__version__ = "0.1.0"

_backend.refresh()  # register the kernels of the current backend choice, before any call (or trace)


__all__ = [
    "KMeans",
    "backends",
    "certified_radius",
    "cluster_means",
    "cluster_variance",
    "kmeans_assign",
    "kmeans_per_group",
    "kmeans_plusplus",
    "kmeans_update",
    "magnet_loss",
    "magnet_loss_batch",
    "pairwise_sqdist",
    "soft_cluster_logits",
    "soft_cluster_predict",
    "use_backend",
]


def __getattr__(name):
    if name == "KMeans":  # clustr_fast.estimator imports scikit-learn: loaded on first use
        from .estimator import KMeans
        return KMeans
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
