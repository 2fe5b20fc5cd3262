"""PGD attacks on models with known answers, restarts, eps curves, the masking diagnostic."""
import pytest
import torch
from torch import nn

from clustr_fast.nn import SoftClusterHead
from clustr_fast.robust import attacks
from clustr_fast.robust.attacks import eps_curve, pgd, robust_accuracy
from clustr_fast.train.classifier import ClusterClassifier
from robust_helpers import one_thread, LinearNet, require_torchattacks  # noqa: F401  (one_thread: autouse fixture)


def linear_cluster_model(seed=0, in_dim=5, feat_dim=3, num_classes=4, variance=0.5):
    """Nearest-center classifier on linear features, one center per class."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(feat_dim, in_dim, generator=g, dtype=torch.float64)
    centers = 2.0 * torch.randn(num_classes, feat_dim, generator=g, dtype=torch.float64)
    head = SoftClusterHead(centers, torch.arange(num_classes), num_classes, variance)
    model = ClusterClassifier(LinearNet(w, num_classes).double(), head, "clustr", num_classes).eval()
    return model, w, centers


def exact_min_perturbation(x, y, w, centers, p):
    """Smallest ``||delta||_p`` (p = inf or 2) moving ``x`` out of class ``y``'s Voronoi
    cell: the region is the polytope ``{a_j . x + b_j < 0, j != y}`` with
    ``a_j = 2 W^T (mu_j - mu_y)``, ``b_j = ||mu_y||^2 - ||mu_j||^2``; the distance
    to its complement is the smallest distance to one face (dual norm of ``a_j``)."""
    out = []
    for xi, yi in zip(x, y):
        best = float("inf")
        for j in range(centers.shape[0]):
            if j == yi:
                continue
            a = 2 * w.T @ (centers[j] - centers[yi])
            b = centers[yi].square().sum() - centers[j].square().sum()
            dual = a.abs().sum() if p == "inf" else a.norm()
            best = min(best, float(-(a @ xi + b) / dual))
        out.append(best)
    return torch.tensor(out, dtype=torch.float64)


def correctly_classified_points(model, n=40, in_dim=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, in_dim, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    return x, y


@pytest.mark.parametrize("loss", ["ce", "margin", "magnet"])
def test_linf_pgd_finds_the_exact_minimal_perturbation_two_classes(loss):
    # one border: every loss's ascent leads to the nearest face of the cell
    model, w, centers = linear_cluster_model(num_classes=2)
    x, y = correctly_classified_points(model)
    r = exact_min_perturbation(x, y, w, centers, "inf")
    assert bool((r > 0).all())
    above = pgd(model, x, y, eps=r * 1.02, steps=20, loss=loss, clip=None)
    assert bool(above.fooled.all())
    assert bool(((above.x_adv - x).abs().amax(1) <= r * 1.02 + 1e-9).all())
    below = pgd(model, x, y, eps=r * 0.98, steps=20, restarts=2, loss=loss, clip=None)
    assert not bool(below.fooled.any())          # no attack can succeed below the minimum


def test_targeted_margin_finds_the_exact_minimal_perturbation_four_classes():
    # several borders: untargeted ascent may end at a vertex of the wrong face;
    # the targeted margin against each other class finds the nearest one
    model, w, centers = linear_cluster_model()
    x, y = correctly_classified_points(model)
    r = exact_min_perturbation(x, y, w, centers, "inf")
    above = pgd(model, x, y, eps=r * 1.02, steps=20, loss="margin", targets=3, clip=None)
    assert bool(above.fooled.all())
    untargeted = pgd(model, x, y, eps=r * 1.02, steps=20, restarts=2, loss="ce", clip=None)
    assert untargeted.fooled.float().mean() >= 0.9
    for loss in ("ce", "margin", "magnet"):
        below = pgd(model, x, y, eps=r * 0.98, steps=20, loss=loss, clip=None)
        assert not bool(below.fooled.any())


def test_l2_pgd_finds_the_exact_minimal_perturbation():
    model, w, centers = linear_cluster_model(seed=3)
    x, y = correctly_classified_points(model, seed=4)
    r = exact_min_perturbation(x, y, w, centers, 2)
    above = pgd(model, x, y, eps=r * 1.02, steps=20, loss="margin", targets=3, norm="l2", clip=None)
    assert bool(above.fooled.all())
    assert bool(((above.x_adv - x).norm(dim=1) <= r * 1.02 + 1e-9).all())
    below = pgd(model, x, y, eps=r * 0.98, steps=20, loss="margin", targets=3, norm="l2", clip=None)
    assert not bool(below.fooled.any())


def test_any_misclassifying_restart_is_kept():
    # steps=0: every restart is one random point of the ball; restart 1 of a longer
    # run draws the same point, so its successes are a superset.
    model, w, centers = linear_cluster_model(seed=5)
    x, y = correctly_classified_points(model, n=200, seed=6)
    r = exact_min_perturbation(x, y, w, centers, "inf")
    kw = dict(eps=r * 1.5, steps=0, loss="ce", clip=None, seed=7)
    one = pgd(model, x, y, restarts=1, **kw)
    many = pgd(model, x, y, restarts=30, **kw)
    assert bool((many.fooled | ~one.fooled).all())           # one.fooled is a subset
    assert int(many.fooled.sum()) > int(one.fooled.sum())
    with torch.no_grad():
        pred = model(many.x_adv).argmax(1)
    assert bool((pred[many.fooled] != y[many.fooled]).all())  # the kept point really fools
    assert bool(((many.x_adv - x).abs().amax(1) <= r * 1.5 + 1e-9).all())
    assert bool((many.x_adv[~many.fooled] == x[~many.fooled]).all())


def test_pgd_respects_the_box():
    model, _, _ = linear_cluster_model(seed=8)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(30, 5, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    res = pgd(model, x, y, eps=0.3, steps=10, restarts=2, loss="margin", clip=(0.0, 1.0))
    assert bool((res.x_adv >= 0).all() and (res.x_adv <= 1).all())
    assert bool(((res.x_adv - x).abs() <= 0.3 + 1e-12).all())


def test_eps_curve_is_monotone_and_starts_at_clean_accuracy():
    model, w, centers = linear_cluster_model(seed=9)
    x, y_pred = correctly_classified_points(model, n=60, seed=10)
    big = 1.05 * float(exact_min_perturbation(x, y_pred, w, centers, "inf").max())
    g = torch.Generator().manual_seed(11)
    y = torch.where(torch.rand(60, generator=g) < 0.2, torch.randint(0, 4, (60,), generator=g),
                    model(x).argmax(1).detach())
    clean = float((model(x).argmax(1) == y).float().mean())
    curve, raw = eps_curve(model, x, y, [0.0, 0.05, 0.1, 0.2, 0.4, big], steps=20, loss="margin",
                           targets=3, clip=None)
    accs = [a for _, a in curve]
    assert accs[0] == pytest.approx(clean)
    assert all(b <= a for a, b in zip(accs, accs[1:]))
    assert accs[-1] == 0.0                         # every point leaves its cell within `big`
    assert all(c <= r + 1e-12 for (_, c), (_, r) in zip(curve, raw))


def saturated_magnet_model():
    """A 2-D nearest-center model with tight clusters (Magnet-like: tiny sigma^2),
    where class probabilities saturate to exactly 0/1 in float32."""
    centers = torch.tensor([[-1.0, 0.0], [1.0, 0.0]])
    head = SoftClusterHead(centers, torch.tensor([0, 1]), 2, 1e-3)
    net = LinearNet(torch.eye(2), 2)
    return ClusterClassifier(net, head, "magnet", 2).eval()


def test_official_loss_masks_gradients_that_log_space_logits_keep():
    model = saturated_magnet_model()
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (100,), generator=g)
    x = torch.stack([torch.where(y == 1, 1.0, -1.0), torch.zeros(100)], 1) + 0.2 * torch.randn(100, 2, generator=g)
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    x, y = x[keep], y[keep]
    official = attacks.input_gradient_norms(model, x, y, loss="official-loss")
    assert float((official == 0).float().mean()) > 0.5       # exp(-s d) underflowed: no signal
    # the margin and the adaptive Magnet loss keep a gradient (log-space CE saturates
    # too once p_y rounds to 1: why the margin attack runs beside it)
    for loss in ("margin", "magnet"):
        assert bool((attacks.input_gradient_norms(model, x, y, loss=loss) > 0).all())
    kw = dict(eps=1.2, steps=20, restarts=2, clip=None)
    acc_margin, _ = robust_accuracy(model, x, y, loss="margin", **kw)
    acc_official, _ = robust_accuracy(model, x, y, loss="official-loss", **kw)
    assert acc_official > acc_margin + 0.3                    # the masked attack looks "robust"


def test_official_loss_is_weaker_on_a_trained_magnet_model():
    # Magnet loss from random init on moons (K = 1), then the whole test set: far from
    # the border exp(-s d) underflows, the reference loss loses its gradient and its
    # PGD leaves more points standing than the log-space attacks do.
    from clustr_fast.data import load_dataset
    from clustr_fast.train import TrainConfig, fit

    model = fit(TrainConfig(data="moons", method="magnet", k=1, seed=0)).classifier
    _, test = load_dataset("moons", seed=0)
    x, y = test.x, test.y
    kw = dict(eps=0.5, steps=20, restarts=2, clip=None)
    acc_log = min(robust_accuracy(model, x, y, loss=loss, **kw)[0] for loss in ("ce", "margin"))
    acc_official, _ = robust_accuracy(model, x, y, loss="official-loss", **kw)
    assert acc_official > acc_log + 0.02


def test_bad_arguments_name_the_argument():
    model, _, _ = linear_cluster_model()
    x = torch.zeros(3, 5, dtype=torch.float64)
    y = torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="`loss`"):
        pgd(model, x, y, eps=0.1, loss="cw")
    with pytest.raises(ValueError, match="`restarts`"):
        pgd(model, x, y, eps=0.1, restarts=0)
    with pytest.raises(ValueError, match="`steps`"):
        pgd(model, x, y, eps=0.1, steps=-1)
    with pytest.raises(ValueError, match="`eps`"):
        pgd(model, x, y, eps=-0.1)
    with pytest.raises(ValueError, match="`y`"):
        pgd(model, x, y[:2], eps=0.1)
    with pytest.raises(ValueError, match="`norm`"):
        pgd(model, x, y, eps=0.1, norm="l1")
    with pytest.raises(ValueError, match="magnet"):
        pgd(nn.Sequential(nn.Linear(5, 2)).double(), x, y, eps=0.1, loss="magnet")


class ImageLinearNet(LinearNet):
    """``[N, 1, 2, 3]`` images -> linear features (torchattacks expects image batches)."""

    def forward(self, x):
        return super().forward(x.flatten(1))


def test_torchattacks_cross_check_agrees_with_pgd():
    require_torchattacks()
    g = torch.Generator().manual_seed(12)
    w = torch.randn(3, 6, generator=g)
    head = SoftClusterHead(2.0 * torch.randn(4, 3, generator=g), torch.arange(4), 4, 0.5)
    model = ClusterClassifier(ImageLinearNet(w, 4), head, "clustr", 4).eval()
    x = torch.rand(64, 1, 2, 3, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    ours, _ = robust_accuracy(model, x, y, eps=0.05, steps=20, restarts=1, loss="ce")
    theirs, _ = attacks.torchattacks_accuracy(model, x, y, eps=0.05, attack="pgd", steps=20)
    assert ours < 1.0
    assert abs(ours - theirs) <= 0.1
    aa, _ = attacks.torchattacks_accuracy(model, x, y, eps=0.05, attack="autoattack", n_classes=4)
    assert aa <= ours + 0.05


def test_logit_losses_are_computed_in_log_space():
    """CE is -log p_y of the log-probabilities (never a cross-entropy over p = exp(logp), the
    masking trap); DLR is (max_{j != y} z_j - z_y) / (z_(1) - z_(3)); absent classes (-inf) stay
    finite and carry no gradient."""
    logp = torch.log_softmax(torch.tensor([[2.0, 0.5, -1.0, 0.0], [-3.0, 1.0, 0.2, 0.1]], dtype=torch.float64), 1)
    y = torch.tensor([0, 2])
    torch.testing.assert_close(attacks.ce_loss(logp, y), -logp[[0, 1], y], rtol=1e-12, atol=0)
    z = logp
    top = z.sort(1, descending=True).values
    want = torch.stack([(z[0, 1] - z[0, 0]) / (top[0, 0] - top[0, 2]), (z[1, 1] - z[1, 2]) / (top[1, 0] - top[1, 2])])
    torch.testing.assert_close(attacks.margin_loss(logp, y), want, rtol=1e-9, atol=0)  # + 1e-12 in the divisor
    two = torch.log_softmax(torch.tensor([[0.3, -0.4]], dtype=torch.float64), 1)
    torch.testing.assert_close(attacks.margin_loss(two, torch.tensor([1])), two[:, 0] - two[:, 1])
    absent = logp.clone().requires_grad_(True)
    masked = torch.where(torch.arange(4) == 3, torch.tensor(float("-inf"), dtype=torch.float64), absent)
    loss = attacks.ce_loss(masked, y).sum() + attacks.margin_loss(masked, y).sum()
    assert torch.isfinite(loss)
    (g,) = torch.autograd.grad(loss, absent)
    assert torch.isfinite(g).all() and (g[:, 3] == 0).all()
