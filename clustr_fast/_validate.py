"""Input checks and argument conventions shared by the plain-PyTorch references, the
fused-op wrappers and the kernels: the accumulation dtype, the precision names and their
integer codes, the radius modes, a given variance as a tensor.

Every check raises before any kernel runs:

- ``TypeError`` for a wrong Python type or dtype (including a dtype mismatch
  between two float tensors that must agree, e.g. ``feats`` and ``centers``);
- ``ValueError`` for a wrong rank, size, value range, device or a non-finite value.

Messages read ``"<op>: `<argument>` <what is wrong>"``, e.g.
``"magnet_loss: `assign` has values outside [0, 7) (min 0, max 9)"``.
Non-contiguous tensors are accepted everywhere. Checks of id ranges and of
positive 0-d tensors read the value back (a device sync on CUDA).
"""

import math
import numbers

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# The names of torch.set_float32_matmul_precision; a name's position is the integer code the
# kernels take (0 highest, 1 high, 2 medium).
PRECISIONS = ("highest", "high", "medium")
HIGHEST = PRECISIONS.index("highest")  # the kernels' code of precision="highest" (float32-exact products)
REDUCTIONS = ("mean", "sum", "none")
RADIUS_MODES = ("sound", "paper")  # position = the kernels' mode code


def acc_dtype(dtype):
    """Accumulation dtype: float64 stays float64, everything else computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def precision_code(precision):
    """The kernels' integer code of "highest" | "high" | "medium"."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return PRECISIONS.index(precision)


def precision_name(code):
    """The precision name of a kernel code (the inverse of ``precision_code``)."""
    return PRECISIONS[code]


def variance_tensor(variance, like):
    """A given variance as a constant (detached) 0-d tensor on ``like``'s device and dtype."""
    if isinstance(variance, torch.Tensor):
        return variance.detach().to(device=like.device, dtype=like.dtype)
    return torch.tensor(float(variance), device=like.device, dtype=like.dtype)


def _p(op):
    return f"{op}: " if op else ""


# --------------------------------------------------------------------------- generic


def check_tensor(t, name, *, op=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{_p(op)}`{name}` must be a torch.Tensor, got {type(t).__name__}")


def check_matrix(t, name, *, op=None):
    """``t`` is a 2-D tensor."""
    check_tensor(t, name, op=op)
    if t.dim() != 2:
        raise ValueError(f"{_p(op)}`{name}` must be 2-D, got shape {tuple(t.shape)}")


def check_float(t, name, *, op=None):
    """``t`` is a float16/bfloat16/float32/float64 tensor."""
    check_tensor(t, name, op=op)
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{_p(op)}`{name}` must be float16, bfloat16, float32 or float64, got {t.dtype}"
        )


def check_same_device(*pairs, op=None):
    """``pairs`` are ``(name, tensor)``; ``None`` tensors are skipped."""
    n0 = t0 = None
    for n, t in pairs:
        if t is None:
            continue
        if t0 is None:
            n0, t0 = n, t
        elif t.device != t0.device:
            raise ValueError(
                f"{_p(op)}`{n}` is on {t.device} but `{n0}` is on {t0.device}"
            )


def check_same_dtype(name_a, a, name_b, b, *, op=None):
    if a.dtype != b.dtype:
        raise TypeError(f"{_p(op)}`{name_b}` has dtype {b.dtype} but `{name_a}` has {a.dtype}")


def check_finite(t, name, *, op=None):
    """Every value of ``t`` is finite. One min/max reduction (NaN propagates through both, an
    infinity shows in one), about 30x cheaper on the CPU than ``isfinite(t).all()``."""
    if t.numel() == 0:
        return
    lo, hi = torch.aminmax(t.detach())
    if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
        raise ValueError(f"{_p(op)}`{name}` contains non-finite values (inf or nan)")


def check_int(v, name, *, low=None, high=None, op=None):
    """A Python (or numpy) integer, not a bool, in [low, high]; returns ``int(v)``."""
    if type(v) is not int and (isinstance(v, bool) or not isinstance(v, numbers.Integral)):
        raise TypeError(f"{_p(op)}`{name}` must be an int, got {type(v).__name__}")
    v = int(v)
    if (low is not None and v < low) or (high is not None and v > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(f"{_p(op)}`{name}` must be in [{lo}, {hi}], got {v}")
    return v


def check_ids(ids, name, upper=None, *, n=None, op=None):
    """Integer 1-D tensor of length ``n`` (if given) with every value in [0, upper)."""
    check_tensor(ids, name, op=op)
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"{_p(op)}`{name}` must have an integer dtype, got {ids.dtype}")
    if ids.dim() != 1:
        raise ValueError(f"{_p(op)}`{name}` must be 1-D, got shape {tuple(ids.shape)}")
    if n is not None and ids.shape[0] != n:
        raise ValueError(f"{_p(op)}`{name}` must have length {n}, got {ids.shape[0]}")
    if upper is not None and ids.numel():
        lo, hi = _int_extrema(ids)
        if lo < 0 or hi >= upper:
            raise ValueError(
                f"{_p(op)}`{name}` has values outside [0, {upper}) (min {lo}, max {hi})"
            )


# Up to this many entries, the (min, max) of a CPU integer tensor come from its values as a Python
# list (one copy; about 0.025 us an entry), cheaper than a reduction's dispatch (about 2 us).
SMALL_IDS = 64


def _int_extrema(ids) -> list:
    """``[min, max]`` of a non-empty integer tensor as Python ints. On the CPU: from the values of a
    small tensor, else one reduction; on a GPU: one reduction and one device sync."""
    if ids.is_cpu:
        if ids.numel() <= SMALL_IDS:
            values = ids.tolist()
            return [min(values), max(values)]
        lo, hi = torch.aminmax(ids)
        return [lo.item(), hi.item()]
    return torch.stack(torch.aminmax(ids.detach())).tolist()


def int64_ids(ids):
    """``ids`` as a contiguous int64 tensor (itself when it is one: no copy, no dispatch)."""
    if ids.dtype == torch.int64 and ids.is_contiguous():
        return ids
    return ids.to(torch.int64).contiguous()


def check_real(v, name, *, op=None):
    """A finite real number (Python number or 0-d tensor); returns it as a float."""
    if isinstance(v, torch.Tensor):
        if v.dim() != 0:
            raise ValueError(f"{_p(op)}`{name}` must be a number or 0-d tensor, got shape {tuple(v.shape)}")
        v = v.item()
    if type(v) is not float and (isinstance(v, bool) or not isinstance(v, numbers.Real)):
        raise TypeError(f"{_p(op)}`{name}` must be a real number, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{_p(op)}`{name}` must be finite, got {v}")
    return v


def check_positive(v, name, *, op=None):
    """A finite, strictly positive float or 0-d float tensor."""
    if isinstance(v, torch.Tensor):
        if v.dim() != 0:
            raise ValueError(f"{_p(op)}`{name}` must be a float or 0-d tensor, got shape {tuple(v.shape)}")
        if not v.dtype.is_floating_point:
            raise TypeError(f"{_p(op)}`{name}` must be a float tensor, got {v.dtype}")
        val = float(v.detach().item())
    elif type(v) is not float and (isinstance(v, bool) or not isinstance(v, numbers.Real)):
        raise TypeError(f"{_p(op)}`{name}` must be a positive float or 0-d tensor, got {type(v).__name__}")
    else:
        val = float(v)
    if not (math.isfinite(val) and val > 0):
        raise ValueError(f"{_p(op)}`{name}` must be finite and > 0, got {val}")


def check_choice(v, name, choices, *, op=None):
    if not isinstance(v, str) or v not in choices:
        raise ValueError(f"{_p(op)}`{name}` must be one of {', '.join(map(repr, choices))}, got {v!r}")


def _points_centers(op, x, xname, c, cname):
    check_matrix(x, xname, op=op)
    check_matrix(c, cname, op=op)
    check_float(x, xname, op=op)
    check_float(c, cname, op=op)
    check_same_dtype(xname, x, cname, c, op=op)
    check_same_device((xname, x), (cname, c), op=op)
    if x.shape[1] != c.shape[1]:
        raise ValueError(
            f"{_p(op)}`{cname}` has dimension {c.shape[1]} but `{xname}` has {x.shape[1]}"
        )


def _feats_ids(op, feats, fname, ids, iname, upper):
    check_matrix(feats, fname, op=op)
    check_float(feats, fname, op=op)
    check_ids(ids, iname, upper, n=feats.shape[0], op=op)
    check_same_device((fname, feats), (iname, ids), op=op)


def _loss_scalars(op, feats, alpha, variance, eps, reduction):
    check_real(alpha, "alpha", op=op)
    e = check_real(eps, "eps", op=op)
    if e < 0:
        raise ValueError(f"{_p(op)}`eps` must be >= 0, got {e}")
    check_choice(reduction, "reduction", REDUCTIONS, op=op)
    if variance is None:
        if feats.shape[0] < 2:
            raise ValueError(
                f"{_p(op)}`feats` needs at least 2 rows to estimate the variance "
                f"(variance=None), got {feats.shape[0]}"
            )
    else:
        check_positive(variance, "variance", op=op)


# --------------------------------------------------------------------------- per op


def check_pairwise_sqdist(x, c, precision="highest"):
    op = "pairwise_sqdist"
    _points_centers(op, x, "x", c, "c")
    check_choice(precision, "precision", PRECISIONS, op=op)


def check_cluster_means(feats, ids, num_clusters):
    op = "cluster_means"
    m = check_int(num_clusters, "num_clusters", low=0, op=op)
    _feats_ids(op, feats, "feats", ids, "ids", m)


def check_cluster_variance(feats, centers, assign):
    op = "cluster_variance"
    _points_centers(op, feats, "feats", centers, "centers")
    check_ids(assign, "assign", centers.shape[0], n=feats.shape[0], op=op)
    check_same_device(("feats", feats), ("assign", assign), op=op)
    if feats.shape[0] < 2:
        raise ValueError(f"{op}: `feats` needs at least 2 rows, got {feats.shape[0]}")


def check_magnet_loss(feats, centers, assign, center_classes, alpha=1.0, variance=None,
                      eps=1e-8, reduction="mean"):
    """``assign`` and ``center_classes`` may be None (their defaults are built from valid inputs)."""
    op = "magnet_loss"
    _points_centers(op, feats, "feats", centers, "centers")
    c = centers.shape[0]
    if c < 1:
        raise ValueError(f"{op}: `centers` must have at least one row")
    if assign is not None:
        check_ids(assign, "assign", c, n=feats.shape[0], op=op)
    if center_classes is not None:
        check_ids(center_classes, "center_classes", None, n=c, op=op)
    check_same_device(("feats", feats), ("assign", assign), ("center_classes", center_classes), op=op)
    _loss_scalars(op, feats, alpha, variance, eps, reduction)


def check_magnet_loss_batch(feats, cluster_ids, cluster_classes, alpha=1.0, variance=None,
                            eps=1e-8, reduction="mean"):
    op = "magnet_loss_batch"
    check_ids(cluster_classes, "cluster_classes", None, op=op)
    m = cluster_classes.shape[0]
    if m < 1:
        raise ValueError(f"{op}: `cluster_classes` must have at least one entry")
    _feats_ids(op, feats, "feats", cluster_ids, "cluster_ids", m)
    check_same_device(("feats", feats), ("cluster_classes", cluster_classes), op=op)
    _loss_scalars(op, feats, alpha, variance, eps, reduction)


def check_soft_cluster_logits(feats, centers, center_classes, num_classes, variance, top_d=None):
    """Returns ``top_d`` as an int (``C`` when None)."""
    op = "soft_cluster_logits"
    _points_centers(op, feats, "feats", centers, "centers")
    c = centers.shape[0]
    if c < 1:
        raise ValueError(f"{op}: `centers` must have at least one row")
    nc = check_int(num_classes, "num_classes", low=1, op=op)
    check_ids(center_classes, "center_classes", nc, n=c, op=op)
    check_same_device(("feats", feats), ("center_classes", center_classes), op=op)
    if variance is None:
        raise TypeError(f"{op}: `variance` is required (a positive float or 0-d tensor)")
    check_positive(variance, "variance", op=op)
    if top_d is None:
        return c
    return check_int(top_d, "top_d", low=1, high=c, op=op)


def check_certified_radius(feats, centers, center_classes, lipschitz, mode="sound"):
    op = "certified_radius"
    _points_centers(op, feats, "feats", centers, "centers")
    c = centers.shape[0]
    if c < 1:
        raise ValueError(f"{op}: `centers` must have at least one row")
    check_ids(center_classes, "center_classes", None, n=c, op=op)
    check_same_device(("feats", feats), ("center_classes", center_classes), op=op)
    check_positive(lipschitz, "lipschitz", op=op)
    check_choice(mode, "mode", RADIUS_MODES, op=op)


def check_sample_weight(sample_weight, x, *, op=None):
    """``sample_weight`` a float tensor [N] on ``x``'s device: finite, >= 0 and not all 0 (one read)."""
    check_tensor(sample_weight, "sample_weight", op=op)
    if not sample_weight.dtype.is_floating_point:
        raise TypeError(f"{_p(op)}`sample_weight` must have a float dtype, got {sample_weight.dtype}")
    if sample_weight.dim() != 1 or sample_weight.shape[0] != x.shape[0]:
        raise ValueError(f"{_p(op)}`sample_weight` must have shape ({x.shape[0]},), got {tuple(sample_weight.shape)}")
    check_same_device(("x", x), ("sample_weight", sample_weight), op=op)
    check_weight_values(sample_weight, op=op)


def check_weight_values(sample_weight, *, op=None):
    """The values of a weight tensor: finite, >= 0 and not all 0 (one read; nothing to check when empty)."""
    if sample_weight.numel():
        lo, hi = torch.stack(torch.aminmax(sample_weight.detach())).tolist()
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{_p(op)}`sample_weight` contains non-finite values (inf or nan)")
        if lo < 0:
            raise ValueError(f"{_p(op)}`sample_weight` must be >= 0, got min {lo}")
        if hi == 0:
            raise ValueError(f"{_p(op)}`sample_weight` is all zero; it must have at least one positive entry")


def check_kmeans_plusplus(x, k, n_local_trials=None, sample_weight=None):
    """Returns ``n_local_trials`` as an int (``2 + int(log(k))`` when None)."""
    op = "kmeans_plusplus"
    check_matrix(x, "x", op=op)
    check_float(x, "x", op=op)
    k = check_int(k, "k", low=1, high=x.shape[0], op=op)
    check_finite(x, "x", op=op)
    if sample_weight is not None:
        check_sample_weight(sample_weight, x, op=op)
    return local_trials(k, n_local_trials, op=op)


def local_trials(k: int, n_local_trials=None, *, op: str | None = None) -> int:
    """Candidates per greedy k-means++ step: ``n_local_trials``, or scikit-learn's ``2 + floor(ln k)``
    when None. With ``op``, a given number is checked (an int >= 1; ``ValueError`` naming ``op``)."""
    if n_local_trials is None:
        return 2 + int(math.log(k))
    if op is None:
        return int(n_local_trials)
    return check_int(n_local_trials, "n_local_trials", low=1, op=op)


def check_kmeans_assign(x, centers, precision="highest"):
    op = "kmeans_assign"
    _points_centers(op, x, "x", centers, "centers")
    if centers.shape[0] < 1:
        raise ValueError(f"{op}: `centers` must have at least one row")
    check_choice(precision, "precision", PRECISIONS, op=op)


def check_kmeans_update(x, labels, k, prev_centers=None, sample_weight=None):
    op = "kmeans_update"
    k = check_int(k, "k", low=1, op=op)
    _feats_ids(op, x, "x", labels, "labels", k)
    if sample_weight is not None:
        check_sample_weight(sample_weight, x, op=op)
    if prev_centers is not None:
        check_matrix(prev_centers, "prev_centers", op=op)
        check_float(prev_centers, "prev_centers", op=op)
        check_same_device(("x", x), ("prev_centers", prev_centers), op=op)
        if tuple(prev_centers.shape) != (k, x.shape[1]):
            raise ValueError(
                f"{op}: `prev_centers` must have shape ({k}, {x.shape[1]}), got {tuple(prev_centers.shape)}"
            )
