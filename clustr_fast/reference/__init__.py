"""Plain-PyTorch reference implementations: the test oracle and the fallback backend.

They import only torch, math and :mod:`clustr_fast._validate`, so they run
without the compiled extension. See each function for its formula and shapes.
"""

from .certified_radius import certified_radius
from .cluster_means import cluster_means, cluster_variance
from .kmeans import kmeans_assign, kmeans_plusplus, kmeans_update
from .magnet_loss import magnet_loss, magnet_loss_batch
from .pairwise_sqdist import pairwise_sqdist
from .soft_cluster_logits import soft_cluster_logits, soft_cluster_predict

__all__ = [
    "certified_radius",
    "cluster_means",
    "cluster_variance",
    "kmeans_assign",
    "kmeans_plusplus",
    "kmeans_update",
    "magnet_loss",
    "magnet_loss_batch",
    "pairwise_sqdist",
    "soft_cluster_logits",
    "soft_cluster_predict",
]
