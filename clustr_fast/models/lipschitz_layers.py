"""Layers with a proven L2 Lipschitz constant, for feature maps whose certificate means something.

Theorem 1 certifies a radius ``(d_j - d_1) / (2 L ||mu_j - mu_1||)``: it is only as good as the
bound ``L`` of the feature map. Each layer here carries its own constant
(``lipschitz_constant()``, 1 for all but ``Centering``) with the proof in its docstring; a chain
of them is bounded by the product (:func:`chain_bound`), with no estimate anywhere.

Two facts carry every proof (``P`` symmetric, ``q > 0``):

- **Weighted Gershgorin.** ``P <= diag(t)`` (Loewner order) when ``t_i >= sum_j |P_ij| q_j / q_i``:
  ``Q (diag(t) - P) Q`` (``Q = diag(q)``) has diagonal ``q_i^2 (t_i - P_ii) >= sum_{j != i}
  |q_i P_ij q_j|``, so it is diagonally dominant with a nonnegative diagonal, hence PSD.
- **Toeplitz restriction.** A zero-padded convolution ``A`` (any padding ``p <= k - 1``, any
  stride) keeps a subset of the outputs of the *full* convolution ``A_full`` (every output its
  kernel touches the input in): ``A = S A_full``, ``||S|| <= 1``. ``A_full^T A_full`` has the
  entries ``P[c, c', p' - p]`` of the kernel's self-correlation ``P[c, c', D] = sum_{o,u}
  K[o, c, u] K[o, c', u + D]`` (all terms are present), so its weighted row sums are at most
  the full ones ``sum_{c', D} |P[c, c', D]| q_c' / q_c``. Likewise ``A A^T <= R C C^T R^T`` for
  the stride-1 map ``A = R C E`` (``E`` zero extension of the input, ``E E^T <= I``; ``R``
  restriction of the outputs; ``C`` the convolution on the whole plane), whose Gram has the
  entries ``P'[o, o', D] = sum_{c,u} K[o, c, u] K[o', c, u + D]``.

Parametrisations: AOL (Prach & Lampert 2022, "Almost-Orthogonal Layers for Efficient
General-Purpose Lipschitz Networks") and SLL (Araujo et al. 2023, "A Unified Algebraic
Perspective on Lipschitz Neural Networks"). No BatchNorm: its running statistics make the
constant data-dependent.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

EPS = 1e-12   # floor of the AOL/SLL row sums: a larger diagonal keeps every bound (see the proofs)


def _self_correlation_rowsums(kernel: torch.Tensor, q: torch.Tensor | None = None) -> torch.Tensor:
    """``t_a = sum_{b, D} |G[a, b, D]| q_b / q_a`` for ``G[a, b, D] = sum_{c, u} K[a, c, u] K[b, c, u + D]``,
    ``kernel`` ``[A, C, kh, kw]`` (rows ``a`` are the batch of a conv of the kernel with itself).
    Returns ``[A]``; ``q=None`` is all ones."""
    kh, kw = kernel.shape[2:]
    g = F.conv2d(kernel, kernel, padding=(kh - 1, kw - 1))       # [A, A, 2kh-1, 2kw-1]
    a = g.abs().sum((2, 3))                                      # [A, A]
    if q is None:
        return a.sum(1)
    return (a @ q) / q


def aol_scale(weight: torch.Tensor, side: str = "in") -> torch.Tensor:
    """AOL scale of a dense ``weight [out, in]``. ``side="in"``: ``d_j = (sum_i |W^T W|_ij)^(-1/2)``
    ``[in]`` (applied as ``W diag(d)``); ``side="out"``: ``d_i = (sum_j |W W^T|_ij)^(-1/2)`` ``[out]``
    (applied as ``diag(d) W``)."""
    gram = weight.T @ weight if side == "in" else weight @ weight.T
    return gram.abs().sum(1).clamp_min(EPS).rsqrt()


def aol_conv_scale(weight: torch.Tensor, side: str = "in") -> torch.Tensor:
    """AOL channel scale of a conv kernel ``weight [out, in, kh, kw]``. ``side="in"``: ``d_c = (sum_{c', D}
    |P[c, c', D]|)^(-1/2)`` ``[in]``, ``P`` the self-correlation over the output channels (``conv2d`` of
    the transposed kernel with itself); ``side="out"``: the same over ``P'``, the self-correlation
    over the input channels, ``[out]``."""
    kernel = weight.transpose(0, 1) if side == "in" else weight
    return _self_correlation_rowsums(kernel).clamp_min(EPS).rsqrt()


def _side(in_size: int, out_size: int) -> str:
    """Rescale the smaller side: its Gram is the smaller one, and the Gershgorin bound of a
    low-rank Gram (the larger side's) is loose, which would shrink a wide layer needlessly."""
    return "in" if in_size <= out_size else "out"


class LipschitzModule(nn.Module):
    """A module with a proven L2 Lipschitz constant ``lipschitz_constant()`` (input -> output)."""

    def lipschitz_constant(self) -> float:
        return 1.0


class AOLLinear(LipschitzModule):
    """``y = W diag(d) x + b``, ``d_j = (sum_i |W^T W|_ij)^(-1/2)`` when ``in <= out``; ``y = diag(d) W x + b``,
    ``d_i = (sum_j |W W^T|_ij)^(-1/2)`` when ``in > out``; ``x [N, in] -> y [N, out]``. L = 1.

    Proof: ``||W D||^2 = ||D W^T W D||``. By weighted Gershgorin (``q = 1``), ``W^T W <= diag(sum_i
    |W^T W|_ij) = D^-2``, so ``D W^T W D <= I``. The row form is the same for ``W^T`` (``||D W|| =
    ||W^T D||``). Flooring the sums at ``EPS`` only enlarges ``D^-2``. Orthogonal initialisation:
    the Gram of the smaller side is ``I``, so ``d = 1`` and the layer starts with all singular
    values 1.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight = nn.Parameter(torch.empty(self.out_features, self.in_features))
        nn.init.orthogonal_(self.weight)
        self.bias = nn.Parameter(torch.zeros(self.out_features)) if bias else None

    def effective_weight(self) -> torch.Tensor:
        """The matrix the layer applies, ``W diag(d)`` or ``diag(d) W`` ``[out, in]``; spectral norm <= 1."""
        if _side(self.in_features, self.out_features) == "in":
            return self.weight * aol_scale(self.weight, "in")[None, :]
        return self.weight * aol_scale(self.weight, "out")[:, None]

    def forward(self, x):
        return F.linear(x, self.effective_weight(), self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class AOLConv2d(LipschitzModule):
    """``y = conv2d(x, K diag_in(d)) + b``, ``d_c = (sum_{c', D} |P[c, c', D]|)^(-1/2)``, ``P[c, c', D] =
    sum_{o,u} K[o, c, u] K[o, c', u + D]`` when ``in <= out``; when ``in > out`` the output channels
    are scaled instead, ``d_o = (sum_{o', D} |P'[o, o', D]|)^(-1/2)``, ``P'[o, o', D] = sum_{c,u}
    K[o, c, u] K[o', c, u + D]``; ``[N, in, H, W] -> [N, out, H', W']``. L = 1.

    Proof (input side): the layer is ``A D`` with ``A`` the zero-padded convolution and ``D`` the
    channel scale repeated over positions. By the Toeplitz restriction, ``A = S A_full``, and
    ``A_full^T A_full`` has row sums of absolute values at most ``d_c^-2`` (the full
    self-correlation sums), so weighted Gershgorin gives ``A_full^T A_full <= D^-2`` and ``||A D||
    <= ||A_full D|| <= 1``. Valid for any stride and zero padding ``p <= k - 1``. Output side: ``D
    A`` with ``A A^T = S (R C E)(R C E)^T S^T <= S R C C^T R^T S^T``, whose weighted row sums are at
    most ``d_o^-2``; so ``||D A|| <= 1``. Initialisation: the centre tap is an orthogonal ``[out,
    in]`` matrix and the rest zero, so ``d = 1`` and every singular value of the tap is 1.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int | None = None, bias: bool = True):
        super().__init__()
        k = int(kernel_size)
        padding = k // 2 if padding is None else int(padding)
        if k < 1:
            raise ValueError(f"AOLConv2d: `kernel_size` must be >= 1, got {kernel_size!r}")
        if not 0 <= padding <= k - 1:
            raise ValueError(f"AOLConv2d: `padding` must lie in [0, kernel_size - 1] = [0, {k - 1}] for the "
                             f"bound to hold, got {padding!r}")
        self.in_channels, self.out_channels, self.kernel_size = int(in_channels), int(out_channels), k
        self.stride, self.padding = int(stride), padding
        self.weight = nn.Parameter(torch.zeros(self.out_channels, self.in_channels, k, k))
        with torch.no_grad():
            centre = torch.empty(self.out_channels, self.in_channels)
            nn.init.orthogonal_(centre)
            self.weight[:, :, k // 2, k // 2] = centre
        self.bias = nn.Parameter(torch.zeros(self.out_channels)) if bias else None

    def effective_weight(self) -> torch.Tensor:
        """The kernel the layer applies, ``K * d`` over input or output channels ``[out, in, k, k]``."""
        if _side(self.in_channels, self.out_channels) == "in":
            return self.weight * aol_conv_scale(self.weight, "in")[None, :, None, None]
        return self.weight * aol_conv_scale(self.weight, "out")[:, None, None, None]

    def forward(self, x):
        return F.conv2d(x, self.effective_weight(), self.bias, self.stride, self.padding)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, bias={self.bias is not None}")


class SLLLinear(LipschitzModule):
    """SDP-based Lipschitz layer ``z = x - 2 W T^-1 relu(W^T x + b)``, ``W [features, inner]``,
    ``T = diag(t)``, ``t_i = sum_j |W^T W|_ij q_j / q_i`` (``q = exp(log_q) > 0`` learned); ``[N, F] -> [N, F]``. L = 1.

    Proof: for inputs ``x, y`` with pre-activations ``a, a'``, ``relu(a) - relu(a') = Lam (a - a')``,
    ``Lam`` diagonal in ``[0, 1]`` (difference quotients of a monotone 1-Lipschitz function), so
    ``z(x) - z(y) = (I - 2M)(x - y)``, ``M = W T^-1 Lam W^T``. With ``S = (T^-1 Lam)^(1/2)``, ``M =
    (W S)(W S)^T`` shares its nonzero eigenvalues with ``S W^T W S <= S T S = Lam <= I`` (weighted
    Gershgorin gives ``W^T W <= T``), so ``0 <= M <= I`` and the symmetric ``I - 2M`` has norm <= 1.
    Flooring ``t`` at ``EPS`` only enlarges ``T``. A residual layer with constant 1, where
    ``x + f(x)`` would prove only 2.
    """

    def __init__(self, features: int, inner: int | None = None):
        super().__init__()
        self.features = int(features)
        self.inner = int(inner) if inner is not None else self.features
        self.weight = nn.Parameter(torch.empty(self.features, self.inner))
        nn.init.xavier_normal_(self.weight)
        self.bias = nn.Parameter(torch.zeros(self.inner))
        self.log_q = nn.Parameter(torch.zeros(self.inner))

    def scale(self) -> torch.Tensor:
        """``t`` ``[inner]``."""
        q = self.log_q.exp()
        return ((self.weight.T @ self.weight).abs() @ q / q).clamp_min(EPS)

    def forward(self, x):
        h = F.relu(x @ self.weight + self.bias) / self.scale()
        return x - 2.0 * h @ self.weight.T

    def extra_repr(self):
        return f"features={self.features}, inner={self.inner}"


class SLLConv2d(LipschitzModule):
    """Convolutional SLL ``z = x - 2 C^T T^-1 relu(C x + b)``: ``C`` the zero-padded "same"
    convolution by ``K [inner, channels, k, k]`` (odd ``k``), ``C^T`` its adjoint
    (``conv_transpose2d``), ``t_h = sum_{h', D} |P'[h, h', D]| q_h' / q_h`` with ``P'[h, h', D] =
    sum_{c,u} K[h, c, u] K[h', c, u + D]``; ``[N, C, H, W] -> [N, C, H, W]``. L = 1.

    Proof: as :class:`SLLLinear` with ``W^T = C``, which needs ``C C^T <= T`` (``t`` repeated over
    positions). By the Toeplitz restriction ``C C^T <= R C_inf C_inf^T R^T``, a block-Toeplitz matrix
    with entries ``P'[h, h', D]`` whose weighted row sums are at most ``t_h``; weighted Gershgorin
    (``q`` constant over positions) closes it.
    """

    def __init__(self, channels: int, inner: int | None = None, kernel_size: int = 3):
        super().__init__()
        k = int(kernel_size)
        if k < 1 or k % 2 == 0:
            raise ValueError(f"SLLConv2d: `kernel_size` must be odd and >= 1, got {kernel_size!r}")
        self.channels = int(channels)
        self.inner = int(inner) if inner is not None else self.channels
        self.kernel_size = k
        self.weight = nn.Parameter(torch.empty(self.inner, self.channels, k, k))
        nn.init.xavier_normal_(self.weight)
        self.bias = nn.Parameter(torch.zeros(self.inner))
        self.log_q = nn.Parameter(torch.zeros(self.inner))

    def scale(self) -> torch.Tensor:
        """``t`` ``[inner]``."""
        return _self_correlation_rowsums(self.weight, self.log_q.exp()).clamp_min(EPS)

    def forward(self, x):
        p = self.kernel_size // 2
        h = F.relu(F.conv2d(x, self.weight, self.bias, padding=p)) / self.scale()[None, :, None, None]
        return x - 2.0 * F.conv_transpose2d(h, self.weight, padding=p)

    def extra_repr(self):
        return f"channels={self.channels}, inner={self.inner}, kernel_size={self.kernel_size}"


class MaxMin(LipschitzModule):
    """GroupSort of size 2 (MaxMin): the channels (dim 1) split into halves ``a, b`` -> ``[max(a, b),
    min(a, b)]``. L = 1, and it preserves the norm.

    Proof: per pair this is sorting, and sorting is 1-Lipschitz in L2: ``||sort u - sort v||^2 =
    ||u||^2 + ||v||^2 - 2 <sort u, sort v>`` and ``<sort u, sort v> >= <u, v>`` (rearrangement
    inequality); the pairs are disjoint coordinates, so the squares add.
    """

    def forward(self, x):
        if x.shape[1] % 2:
            raise ValueError(f"MaxMin: dim 1 must be even, got {x.shape[1]}")
        a, b = x.chunk(2, dim=1)
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)


class ReLU(LipschitzModule, nn.ReLU):
    """``max(x, 0)`` elementwise. L = 1: ``|relu(s) - relu(t)| <= |s - t|`` per coordinate."""


class InvertibleDownsample(LipschitzModule):
    """``pixel_unshuffle``: ``[N, C, H, W] -> [N, C f^2, H/f, W/f]``. L = 1 (exactly: a permutation of
    coordinates is orthogonal, so it preserves every distance)."""

    def __init__(self, factor: int = 2):
        super().__init__()
        self.factor = int(factor)

    def forward(self, x):
        return F.pixel_unshuffle(x, self.factor)

    def extra_repr(self):
        return f"factor={self.factor}"


class ScaledAvgPool2d(LipschitzModule):
    """``f * avg_pool2d(x, f)`` (each output ``sum(window) / f``): ``[N, C, H, W] -> [N, C, H/f, W/f]``.
    L = 1: the windows are disjoint, so the rows of the matrix are orthogonal with norm
    ``sqrt(f^2) / f = 1`` (``A A^T = I``, ``||A|| = 1``)."""

    def __init__(self, factor: int = 2):
        super().__init__()
        self.factor = int(factor)

    def forward(self, x):
        return self.factor * F.avg_pool2d(x, self.factor)

    def extra_repr(self):
        return f"factor={self.factor}"


class Flatten(LipschitzModule, nn.Flatten):
    """Reshape ``[N, ...] -> [N, -1]``. L = 1 (the same coordinates)."""


class Centering(LipschitzModule):
    """``(x - mean) / scale``, ``mean`` per channel (dim 1), ``scale`` one positive number.
    L = ``1 / scale`` exactly: a translation followed by an isotropic scaling. (Per-channel scales
    would cost ``1 / min(std)`` and distort distances; one scale keeps the geometry.)"""

    def __init__(self, mean, scale: float = 1.0):
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
        scale = float(scale)
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"Centering: `scale` must be a finite number > 0, got {scale!r}")
        self.register_buffer("mean", mean)
        self.scale = scale

    def lipschitz_constant(self) -> float:
        return 1.0 / self.scale

    def forward(self, x):
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape)) / self.scale

    def extra_repr(self):
        return f"channels={self.mean.numel()}, scale={self.scale:g}"


def chain_bound(modules) -> float:
    """Product of ``lipschitz_constant()`` over a chain of modules (``nn.Sequential`` or an iterable;
    nested ``Sequential`` allowed): ``||g_n o ... o g_1||_Lip <= prod ||g_i||_Lip``.
    ``TypeError`` names a module without a proven constant."""
    total = 1.0
    for m in modules:
        if isinstance(m, nn.Sequential):
            total *= chain_bound(m)
        elif isinstance(m, LipschitzModule):
            total *= float(m.lipschitz_constant())
        else:
            raise TypeError(f"chain_bound: {type(m).__name__} has no proven Lipschitz constant")
    return total


__all__ = ["AOLConv2d", "AOLLinear", "Centering", "Flatten", "InvertibleDownsample", "LipschitzModule", "MaxMin",
           "ReLU", "SLLConv2d", "SLLLinear", "ScaledAvgPool2d", "aol_conv_scale", "aol_scale", "chain_bound"]
