"""The cluster-neighbourhood sampler: structure of a batch and seed probabilities."""
import pytest
import torch

from clustr_fast.train import NeighbourhoodSampler


def line_clusters(num_clusters=8, per_cluster=30, k=2):
    """Centers at 0, 1, ..., C-1 on a line; cluster c belongs to class c // k."""
    centers = torch.zeros(num_clusters, 3)
    centers[:, 0] = torch.arange(num_clusters, dtype=torch.float32)
    classes = torch.arange(num_clusters) // k
    assign = torch.arange(num_clusters).repeat_interleave(per_cluster)
    perm = torch.randperm(assign.numel(), generator=torch.Generator().manual_seed(1))
    return assign[perm], centers, classes


def make_sampler(m=4, d=5, **kw):
    assign, centers, classes = line_clusters(**kw)
    s = NeighbourhoodSampler(assign.numel(), m, d, torch.Generator().manual_seed(0))
    s.set_clusters(assign, centers, classes)
    return s, assign, centers, classes


def test_batch_structure_nearest_impostors_first():
    s, assign, centers, classes = make_sampler(m=4, d=5)
    for _ in range(20):
        b = s.sample()
        seed = int(b.clusters[0])
        assert b.indices.shape == (20,) and b.cluster_ids.tolist() == [i // 5 for i in range(20)]
        assert torch.equal(b.cluster_classes, classes[b.clusters])
        # every sample lies in its cluster, no sample twice within a cluster of >= d members
        assert torch.equal(assign[b.indices], b.clusters[b.cluster_ids])
        for j in range(4):
            assert b.indices[j * 5:(j + 1) * 5].unique().numel() == 5
        # impostors: other classes, nearest first, and the m - 1 nearest of them
        others = [c for c in range(8) if classes[c] != classes[seed]]
        dist = {c: abs(c - seed) for c in others}
        expect = sorted(others, key=lambda c: (dist[c], c))[:3]
        assert b.clusters[1:].tolist() == expect
        assert (b.cluster_classes[1:] != b.cluster_classes[0]).all()


def test_uniform_before_losses_then_proportional_to_mean_loss():
    s, assign, _, _ = make_sampler()
    assert torch.allclose(s.seed_probabilities(), torch.full((8,), 1 / 8, dtype=torch.float64))
    losses = torch.where(assign == 3, 2.0, 0.0)
    losses[assign == 5] = 1.0
    s.update_losses(torch.arange(assign.numel()), losses)
    p = s.seed_probabilities()
    assert p[3].item() == pytest.approx(2 / 3) and p[5].item() == pytest.approx(1 / 3)
    seeds = torch.stack([s.sample().clusters[0] for _ in range(200)])
    assert set(seeds.tolist()) <= {3, 5}
    assert 0.5 < (seeds == 3).float().mean().item() < 0.85


def test_clusters_without_known_loss_get_the_mean_of_the_others():
    s, assign, _, _ = make_sampler()
    seen = assign < 2
    s.update_losses(seen.nonzero().squeeze(1), torch.where(assign[seen] == 0, 1.0, 3.0))
    means = s.cluster_losses()
    assert means[0] == 1.0 and means[1] == 3.0 and torch.allclose(means[2:], torch.full((6,), 2.0, dtype=torch.float64))


def test_small_clusters_sample_with_replacement_and_empty_ones_never():
    assign, centers, classes = line_clusters(num_clusters=4, per_cluster=3, k=1)
    assign = assign[assign != 2]                       # cluster 2 is empty
    s = NeighbourhoodSampler(assign.numel(), m=4, d=5, generator=torch.Generator().manual_seed(0))
    s.set_clusters(assign, centers, classes)
    for _ in range(30):
        b = s.sample()
        assert 2 not in b.clusters.tolist()
        assert b.clusters.numel() == 3                 # seed + the 2 non-empty impostor clusters
        assert torch.equal(assign[b.indices], b.clusters[b.cluster_ids])


def test_fewer_impostor_clusters_than_m_minus_one():
    s, _, _, classes = make_sampler(m=12, d=3, num_clusters=4, k=2)    # 2 classes x 2 clusters
    b = s.sample()
    assert b.clusters.numel() == 3 and b.indices.numel() == 9
    assert (classes[b.clusters[1:]] != classes[b.clusters[0]]).all()


def test_sampler_is_seeded_and_checks_inputs():
    a = [make_sampler()[0].sample().indices for _ in range(2)]
    assert torch.equal(a[0], a[1])
    with pytest.raises(ValueError, match="m >= 2"):
        NeighbourhoodSampler(10, 1, 5, torch.Generator())
    s = NeighbourhoodSampler(10, 2, 5, torch.Generator())
    with pytest.raises(RuntimeError, match="set_clusters"):
        s.sample()
    with pytest.raises(ValueError, match="assign"):
        s.set_clusters(torch.zeros(3, dtype=torch.long), torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))


def test_clusters_of_exactly_d_examples_give_each_example_once():
    s, assign, _, _ = make_sampler(m=3, d=6, num_clusters=6, per_cluster=6, k=2)
    for _ in range(20):
        b = s.sample()
        for j in range(b.clusters.numel()):
            rows = b.indices[b.cluster_ids == j]
            assert sorted(rows.tolist()) == sorted((assign == b.clusters[j]).nonzero()[:, 0].tolist())
