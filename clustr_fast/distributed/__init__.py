"""k-means over the rows of every rank of a ``torch.distributed`` process group.

Each rank holds a shard of the rows (any number, zero included); the data set is the
concatenation of the shards in rank order. Every function takes ``group`` (``None``: the default
process group) and equals its single-process counterpart on that concatenation:

- ``kmeans_plusplus(x, k, *, generator=None, n_local_trials=None, group=None)
  -> (centers [k, d], indices [k])``: greedy k-means++ drawing from the global D^2 law;
  indices are positions in the concatenation. As :func:`clustr_fast.kmeans_plusplus` with the
  same generator state (group rank 0's generator is used).
- ``kmeans(x, k, *, init="k-means++" | "k-means||" | Tensor, max_iter=300, tol=1e-4, seed=0,
  n_local_trials=None, group=None) -> (centers [k, d], labels [n_r], inertia, n_iter)``:
  scikit-learn's Lloyd with one packed ``all_reduce`` per iteration; as
  ``clustr_fast.KMeans(k, init=init, n_init=1, max_iter, tol, random_state=seed)``.
  "k-means||" (Bahmani et al.) is deterministic for a seed, the world size and the shards.
- ``kmeans_per_group(x, groups, k, *, max_iter=20, tol=1e-4, seed=0, generator=None,
  n_local_trials=None, num_groups=None, group=None) -> (labels [n_r], centers [G*k, d])``:
  ClusTR's per-class refresh, every group in the same collectives; as
  :func:`clustr_fast.kmeans_per_group`.

Centers are identical (bitwise) on every rank; labels are those of the local rows. Without an
initialised process group, or with a group of one rank, each function runs the single-process
one and returns exactly its result; passing ``group`` without an initialised process group
raises ``RuntimeError``. Ranks that disagree on the shape, dtype or arguments (``d``, ``k``,
``G``, ``max_iter``, ``tol``, ...) raise ``ValueError`` on every rank naming the argument and
the ranks; a rank whose own input checks fail raises its error and the others name it. A
collective that fails (a rank raised or exited mid-fit, or the process group's timeout passed:
``init_process_group(timeout=...)``) raises :class:`DistributedError` on the ranks still
running. Works with Gloo (CPU tensors) and NCCL (CUDA tensors, one device per rank: call
``torch.cuda.set_device`` first).
"""
from ._comm import DistributedError
from .kmeans import kmeans, kmeans_plusplus
from .kmeans_per_group import kmeans_per_group

__all__ = ["DistributedError", "kmeans", "kmeans_per_group", "kmeans_plusplus"]
