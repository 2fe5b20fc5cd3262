"""Benchmark shapes, named after where they come from.

ClusTR shapes: a Magnet-loss batch is 12 clusters x 20 samples of 512-d
features; a CIFAR-10 epoch of features is 50,000 x 512 against 200 centers
(10 classes x K=20 ... x K=2 in the paper's default); k-means at scale is
1,000,000 x 1,024 centers x 128 dims.
"""

# (N, K, d)
PAIRWISE_GPU = [(1_000_000, 1_024, 128), (50_000, 200, 512)]
PAIRWISE_CPU = [(20_000, 256, 128)]

# Magnet loss
MAGNET_BATCH = dict(clusters=12, per_cluster=20, d=512)  # the ClusTR training batch
MAGNET_GLOBAL_GPU = [(50_000, 200, 512), (1_000_000, 4_096, 128)]
MAGNET_GLOBAL_CPU = [(20_000, 256, 128)]

# Soft top-D classification: (N, C, d, D)
SOFT_GPU = [(50_000, 200, 512, 20), (200_000, 2_000, 512, 32)]
SOFT_CPU = [(20_000, 256, 128, 20)]

# k-means
KMEANS_ASSIGN_GPU = [(1_000_000, 1_024, 128)]
KMEANS_LLOYD_GPU = [(1_000_000, 20_000, 256)]
KMEANS_REFRESH = dict(groups=10, per_group=5_000, d=512, k=2, iters=20)
KMEANS_CPU = dict(n=50_000, d=64, k=64, iters=20)
