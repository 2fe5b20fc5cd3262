"""Outputs and gradients of every public op on fixed random inputs, saved to compare two trees bitwise.

    python tools/op_outputs.py OUT.pt [--backend cpu]        (in each tree: PYTHONPATH=<tree>)
    python tools/op_outputs.py --compare A.pt B.pt            (exit 1 if any tensor differs)

Each case runs forward and, where the op is differentiable, backward with a fixed upstream
gradient; float32 and float64; odd shapes. A refactoring of the op layer must leave every
saved tensor bitwise equal on the same backend and thread count.
"""
from __future__ import annotations

import argparse
import sys

import torch


def _cases(dtype):
    import clustr_fast as cf

    g = torch.Generator().manual_seed(7)

    def r(*shape):
        return (torch.randn(*shape, generator=g) * 2).to(dtype)

    x, c = r(37, 13), r(9, 13)
    cls = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    assign = torch.randint(0, 9, (37,), generator=g)
    ids = torch.randint(0, 6, (37,), generator=g)
    bcls = torch.tensor([0, 0, 1, 1, 2, 2])
    out = {}

    def grads(name, fn, upstream=None):
        xs, cs = x.clone().requires_grad_(True), c.clone().requires_grad_(True)
        y = fn(xs, cs)
        gy = torch.randn(y.shape, generator=g, dtype=y.dtype) if upstream is None else upstream
        xs_g, cs_g = torch.autograd.grad(y, (xs, cs), gy, allow_unused=True)
        out[name] = y.detach()
        out[name + ".grad_x"] = xs_g
        if cs_g is not None:
            out[name + ".grad_c"] = cs_g

    grads("pairwise_sqdist", lambda a, b: cf.pairwise_sqdist(a, b))
    grads("soft_cluster_logits", lambda a, b: cf.soft_cluster_logits(a, b, cls, 3, variance=1.7, top_d=4))
    for red in ("mean", "sum", "none"):
        grads(f"magnet_loss.{red}", lambda a, b: cf.magnet_loss(a, b, assign, cls, alpha=0.5, reduction=red))
        grads(f"magnet_loss.var.{red}", lambda a, b: cf.magnet_loss(a, b, assign, cls, alpha=0.5, variance=2.5,
                                                                   reduction=red))
        grads(f"magnet_loss_batch.{red}", lambda a, b: cf.magnet_loss_batch(a, ids, bcls, alpha=0.5, reduction=red)
              + 0 * b.sum())
    grads("magnet_loss.defaults", lambda a, b: cf.magnet_loss(a, b))
    out["certified_radius"] = cf.certified_radius(x, c, cls, 1.3)
    out["kmeans_assign"] = torch.stack([t.to(torch.float64) for t in cf.kmeans_assign(x, c)])
    upd, cnt = cf.kmeans_update(x, assign, 9, prev_centers=c)
    out["kmeans_update"], out["kmeans_update.counts"] = upd, cnt
    out["kmeans_plusplus"] = cf.kmeans_plusplus(x, 5, generator=torch.Generator().manual_seed(3))[1]
    labels, centers = cf.kmeans_per_group(x, ids % 2, 3, generator=torch.Generator().manual_seed(4))
    out["kmeans_per_group"], out["kmeans_per_group.centers"] = labels, centers
    km = cf.KMeans(4, n_init=2, random_state=0).fit(x)
    out["KMeans.centers"], out["KMeans.labels"] = torch.as_tensor(km.cluster_centers_), torch.as_tensor(km.labels_)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?")
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"))
    args = ap.parse_args(argv)
    if args.compare:
        a, b = (torch.load(p) for p in args.compare)
        bad = [k for k in sorted(set(a) | set(b)) if k not in a or k not in b or not torch.equal(a[k], b[k])]
        print(f"{len(a)} tensors compared; {len(bad)} differ" + (": " + ", ".join(bad) if bad else ""))
        return 1 if bad else 0
    import clustr_fast

    torch.set_num_threads(args.threads)
    with clustr_fast.use_backend(args.backend):
        out = {f"{dt}.{k}": v for dt in (torch.float32, torch.float64) for k, v in _cases(dt).items()}
    torch.save(out, args.out)
    print(f"{len(out)} tensors -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
