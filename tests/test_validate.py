"""Input checks: the right exception type, naming the argument, before any math runs."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clustr_fast import _validate as V
from clustr_fast import reference as R

F = torch.randn(7, 3)
C = torch.randn(4, 3)
A = torch.tensor([0, 1, 2, 3, 0, 1, 2])
CC = torch.tensor([0, 0, 1, 2])
META = torch.device("meta")


def _bad(**over):
    """Keyword arguments of magnet_loss with some replaced."""
    kw = dict(feats=F, centers=C, assign=A, center_classes=CC)
    kw.update(over)
    return kw


CASES = [
    # pairwise_sqdist
    (lambda: R.pairwise_sqdist(F.numpy(), C), TypeError, "x"),
    (lambda: R.pairwise_sqdist(F[0], C), ValueError, "`x` must be 2-D"),
    (lambda: R.pairwise_sqdist(F, C.double()), TypeError, "`c` has dtype"),
    (lambda: R.pairwise_sqdist(F.int(), C.int()), TypeError, "`x` must be float"),
    (lambda: R.pairwise_sqdist(F, C[:, :2]), ValueError, "`c` has dimension 2"),
    (lambda: R.pairwise_sqdist(F, C.to(META)), ValueError, "`c` is on meta"),
    (lambda: R.pairwise_sqdist(F, C, precision="low"), ValueError, "precision"),
    # cluster_means / cluster_variance
    (lambda: R.cluster_means(F, A, 3), ValueError, r"`ids` has values outside \[0, 3\)"),
    (lambda: R.cluster_means(F, A.float(), 4), TypeError, "ids"),
    (lambda: R.cluster_means(F, A[:5], 4), ValueError, "`ids` must have length 7"),
    (lambda: R.cluster_means(F, A, 4.0), TypeError, "num_clusters"),
    (lambda: R.cluster_means(F, A, True), TypeError, "num_clusters"),
    (lambda: R.cluster_variance(F[:1], C, A[:1]), ValueError, "feats"),
    (lambda: R.cluster_variance(F, C, A - 1), ValueError, "assign"),
    # magnet_loss
    (lambda: R.magnet_loss(**_bad(assign=A + 4)), ValueError, r"magnet_loss: `assign` has values outside \[0, 4\)"),
    (lambda: R.magnet_loss(**_bad(assign=A.view(7, 1))), ValueError, "assign"),
    (lambda: R.magnet_loss(**_bad(center_classes=CC[:3])), ValueError, "center_classes"),
    (lambda: R.magnet_loss(**_bad(center_classes=CC.float())), TypeError, "center_classes"),
    (lambda: R.magnet_loss(**_bad(centers=C.half())), TypeError, "centers"),
    (lambda: R.magnet_loss(**_bad(centers=C[:0], center_classes=CC[:0])), ValueError, "centers"),
    (lambda: R.magnet_loss(**_bad(feats=F[:1], assign=A[:1])), ValueError, "feats"),
    (lambda: R.magnet_loss(**_bad(), alpha=float("nan")), ValueError, "alpha"),
    (lambda: R.magnet_loss(**_bad(), alpha="1"), TypeError, "alpha"),
    (lambda: R.magnet_loss(**_bad(), eps=-1e-8), ValueError, "eps"),
    (lambda: R.magnet_loss(**_bad(), variance=0.0), ValueError, "variance"),
    (lambda: R.magnet_loss(**_bad(), variance=torch.tensor([1.0])), ValueError, "variance"),
    (lambda: R.magnet_loss(**_bad(), variance=torch.tensor(float("inf"))), ValueError, "variance"),
    (lambda: R.magnet_loss(**_bad(), variance="big"), TypeError, "variance"),
    (lambda: R.magnet_loss(**_bad(), reduction="max"), ValueError, "reduction"),
    # magnet_loss_batch
    (lambda: R.magnet_loss_batch(F, A, CC[:3]), ValueError, r"`cluster_ids` has values outside \[0, 3\)"),
    (lambda: R.magnet_loss_batch(F, A, CC.view(2, 2)), ValueError, "cluster_classes"),
    (lambda: R.magnet_loss_batch(F, A, CC[:0]), ValueError, "cluster_classes"),
    (lambda: R.magnet_loss_batch(F[:1], A[:1], CC), ValueError, "feats"),
    (lambda: R.magnet_loss_batch(F, A, CC.to(META)), ValueError, "cluster_classes"),
    # soft_cluster_logits
    (lambda: R.soft_cluster_logits(F, C, CC, 2, variance=1.0), ValueError, r"`center_classes` has values outside \[0, 2\)"),
    (lambda: R.soft_cluster_logits(F, C, CC, 3, variance=1.0, top_d=0), ValueError, "top_d"),
    (lambda: R.soft_cluster_logits(F, C, CC, 3, variance=1.0, top_d=5), ValueError, "top_d"),
    (lambda: R.soft_cluster_logits(F, C, CC, 3, variance=1.0, top_d=2.0), TypeError, "top_d"),
    (lambda: R.soft_cluster_logits(F, C, CC, 3, variance=-1.0), ValueError, "variance"),
    (lambda: R.soft_cluster_logits(F, C, CC, 3, variance=None), TypeError, "variance"),
    (lambda: R.soft_cluster_logits(F, C, CC, 0, variance=1.0), ValueError, "num_classes"),
    (lambda: R.soft_cluster_predict(F, C.double(), CC, 3, variance=1.0), TypeError, "centers"),
    # certified_radius
    (lambda: R.certified_radius(F, C, CC, 0.0), ValueError, "lipschitz"),
    (lambda: R.certified_radius(F, C, CC, torch.tensor(1)), TypeError, "lipschitz"),
    (lambda: R.certified_radius(F, C, CC, 1.0, mode="tight"), ValueError, "mode"),
    (lambda: R.certified_radius(F, C, CC[:2], 1.0), ValueError, "center_classes"),
    # k-means
    (lambda: R.kmeans_plusplus(F, 8), ValueError, "`k` must be in"),
    (lambda: R.kmeans_plusplus(F, 0), ValueError, "k"),
    (lambda: R.kmeans_plusplus(F, 2, n_local_trials=0), ValueError, "n_local_trials"),
    (lambda: R.kmeans_plusplus(torch.tensor([[0.0], [float("inf")]]), 1), ValueError, "`x` contains non-finite"),
    (lambda: R.kmeans_plusplus(F.long(), 1), TypeError, "x"),
    (lambda: R.kmeans_assign(F, C[:0]), ValueError, "centers"),
    (lambda: R.kmeans_assign(F, C, precision="fast"), ValueError, "precision"),
    (lambda: R.kmeans_update(F, A, 3), ValueError, "labels"),
    (lambda: R.kmeans_update(F, A, 0), ValueError, "k"),
    (lambda: R.kmeans_update(F, A, 4, prev_centers=C[:3]), ValueError, "prev_centers"),
    (lambda: R.kmeans_update(F, A, 4, prev_centers=C.long()), TypeError, "prev_centers"),
]


@pytest.mark.parametrize("i", range(len(CASES)))
def test_bad_input_raises_naming_the_argument(i):
    fn, exc, match = CASES[i]
    with pytest.raises(exc, match=match):
        fn()


def test_good_inputs_pass_and_normalise():
    assert V.check_soft_cluster_logits(F, C, CC, 3, 1.0, None) == 4
    assert V.check_soft_cluster_logits(F, C, CC, 3, torch.tensor(2.0), 2) == 2
    assert V.check_kmeans_plusplus(F, 7, None) == 2 + 1
    assert V.check_kmeans_plusplus(F, 3, 4) == 4
    # non-contiguous inputs and int32 ids are fine
    V.check_magnet_loss(F.t().contiguous().t(), C[::1], A.int(), CC, 1.0, None, 0.0, "none")
    V.check_kmeans_update(F, A, 4, C.double())
    V.check_finite(torch.empty(0), "x")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-5, 20), min_size=0, max_size=30), st.integers(0, 12),
       st.sampled_from([torch.int64, torch.int32, torch.int16]))
def test_check_ids_property(values, upper, dtype):
    ids = torch.tensor(values, dtype=dtype)
    ok = all(0 <= v < upper for v in values)
    if ok:
        V.check_ids(ids, "assign", upper, n=len(values), op="magnet_loss")
    else:
        with pytest.raises(ValueError, match=rf"magnet_loss: `assign` has values outside \[0, {upper}\)"):
            V.check_ids(ids, "assign", upper, n=len(values), op="magnet_loss")
    with pytest.raises(ValueError, match="`assign` must have length"):
        V.check_ids(ids, "assign", None, n=len(values) + 1)
    with pytest.raises(TypeError, match="assign"):
        V.check_ids(ids.bool(), "assign", upper)
