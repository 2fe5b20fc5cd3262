// The argument checks of each op, one definition for its CPU (csrc/cpu/<op>.cpp) and CUDA
// (csrc/cuda/<op>.cu) kernels, and the pairwise_sqdist backward, which both run as the same two
// ATen products. The public functions check every argument before any op runs
// (clustr_fast/_validate.py, with messages that name the caller); these checks guard the ops
// when they are called directly (torch.ops.clustr_fast.*). The CUDA kernels read both operands
// with one scalar type and add check_same_dtype; the CPU kernels cast both to the accumulation
// type and take mixed dtypes.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "common.h"

namespace clustr_fast {

inline void check_same_dtype(const at::Tensor& a, const at::Tensor& b, const char* a_name, const char* b_name) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), a_name, " and ", b_name, " must have the same dtype");
}

// Rows [N, d] and centers [C, d]: two floating matrices with the same d.
inline void check_rows_and_centers(const at::Tensor& x, const at::Tensor& c, const char* x_name,
                                   const char* c_name) {
  check_matrix(x, x_name);
  check_matrix(c, c_name);
  TORCH_CHECK(x.size(1) == c.size(1), x_name, " and ", c_name, " must have the same number of columns");
}

inline void check_has_centers(const at::Tensor& c, const char* c_name) {
  TORCH_CHECK(c.size(0) >= 1, c_name, " must have at least one row");
}

// ------------------------------------------------------------------ pairwise_sqdist

inline void check_pairwise_sqdist(const at::Tensor& x, const at::Tensor& c, int64_t precision) {
  check_rows_and_centers(x, c, "x", "c");
  check_precision(precision);
}

// (grad_x, grad_c) of out = pairwise_sqdist(x, c) for the upstream gradient g [N, K], in the
// accumulation type, cast back to each input's dtype; on the device's BLAS, one product each:
//   grad_x = 2 rowsum(g) x - 2 g c ;  grad_c = 2 colsum(g) c - 2 g^T x
inline std::tuple<at::Tensor, at::Tensor> pairwise_sqdist_backward_products(const at::Tensor& grad,
                                                                            const at::Tensor& x_in,
                                                                            const at::Tensor& c_in,
                                                                            int64_t precision) {
  check_pairwise_sqdist(x_in, c_in, precision);
  const auto acc = acc_type(x_in.scalar_type());
  const at::Tensor g = grad.to(acc);
  const at::Tensor x = x_in.to(acc);
  const at::Tensor c = c_in.to(acc);
  at::Tensor gx = at::addmm(x * g.sum(1, /*keepdim=*/true), g, c, /*beta=*/2, /*alpha=*/-2);
  at::Tensor gc = at::addmm(c * g.sum(0).unsqueeze(1), g.t(), x, /*beta=*/2, /*alpha=*/-2);
  return {gx.to(x_in.scalar_type()), gc.to(c_in.scalar_type())};
}

// ------------------------------------------------------------------ k-means

// kmeans_assign and kmeans_lloyd_step: rows, at least one center, and with groups [N] the
// group_k centers of each group.
inline void check_kmeans_assign(const at::Tensor& x, const at::Tensor& c, int64_t precision,
                                const std::optional<at::Tensor>& groups, int64_t group_k) {
  check_rows_and_centers(x, c, "x", "centers");
  check_precision(precision);
  check_has_centers(c, "centers");
  if (groups.has_value()) {
    TORCH_CHECK(groups->dim() == 1 && groups->size(0) == x.size(0), "groups must be 1-D of length N");
    TORCH_CHECK(group_k >= 1, "group_k must be >= 1");
  }
}

inline void check_kmeans_update(const at::Tensor& x, const at::Tensor& labels, int64_t k,
                                const std::optional<at::Tensor>& prev_centers) {
  check_matrix(x, "x");
  TORCH_CHECK(k >= 1, "k must be >= 1");
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == x.size(0), "labels must be 1-D of length N");
  if (prev_centers.has_value())
    TORCH_CHECK(prev_centers->dim() == 2 && prev_centers->size(0) == k && prev_centers->size(1) == x.size(1),
                "prev_centers must be [k, d]");
}

// The row weights of the k-means ops (kmeans_update, kmeans_lloyd_step, kmeans_plusplus).
inline void check_row_weights(const std::optional<at::Tensor>& weights, int64_t n) {
  if (weights.has_value())
    TORCH_CHECK(weights->dim() == 1 && weights->size(0) == n, "weights must be 1-D of length N");
}

// kmeans_plusplus: draws [k-1, G, T] for G segments, and every segment (offsets, on the host)
// holding at least k rows.
inline void check_plusplus_draws(const at::Tensor& draws, int64_t k, int64_t G) {
  TORCH_CHECK(draws.dim() == 3 && draws.size(0) == std::max<int64_t>(k - 1, 0) && draws.size(1) == G &&
                  draws.size(2) >= 1,
              "draws must have shape [k-1, G, T]");
}

inline void check_segment_rows(const int64_t* offsets, int64_t G, int64_t k) {
  for (int64_t g = 0; g < G; ++g)
    TORCH_CHECK(offsets[g + 1] - offsets[g] >= k, "segment ", g, " has fewer than k rows");
}

// kmeans_lloyd_groups: rows x [N, d] in the segments of offsets [G + 1], from centers [G * k, d].
inline void check_lloyd_groups(const at::Tensor& x, const at::Tensor& offsets, const at::Tensor& centers,
                               int64_t max_iter, int64_t precision) {
  check_matrix(x, "x");
  check_matrix(centers, "centers");
  check_precision(precision);
  TORCH_CHECK(offsets.dim() == 1 && offsets.numel() >= 2, "offsets must be 1-D with at least two entries");
  TORCH_CHECK(max_iter >= 0, "max_iter must be >= 0");
  const int64_t G = offsets.numel() - 1;
  TORCH_CHECK(centers.size(0) % G == 0 && centers.size(0) > 0, "centers must hold k rows per group");
  TORCH_CHECK(centers.size(1) == x.size(1), "centers must have ", x.size(1), " columns, got ", centers.size(1));
}

// ------------------------------------------------------------------ soft_cluster_logits

inline void check_soft_cluster_logits(const at::Tensor& feats, const at::Tensor& centers,
                                      const at::Tensor& center_classes, int64_t num_classes, double variance,
                                      int64_t top_d, int64_t precision) {
  check_rows_and_centers(feats, centers, "feats", "centers");
  check_precision(precision);
  TORCH_CHECK(center_classes.dim() == 1 && center_classes.size(0) == centers.size(0),
              "center_classes must have one entry per center");
  TORCH_CHECK(top_d >= 1 && top_d <= centers.size(0), "top_d must be in [1, C], got ", top_d);
  TORCH_CHECK(num_classes >= 1, "num_classes must be >= 1");
  TORCH_CHECK(variance > 0, "variance must be > 0");
}

inline void check_soft_cluster_logits_backward(const at::Tensor& grad, const at::Tensor& out, const at::Tensor& idx,
                                               const at::Tensor& feats, const at::Tensor& centers, double variance) {
  check_matrix(feats, "feats");
  check_matrix(centers, "centers");
  TORCH_CHECK(grad.sizes() == out.sizes(), "grad and out must have the same shape");
  TORCH_CHECK(idx.dim() == 2 && idx.size(0) == feats.size(0), "idx must be [N, D]");
  TORCH_CHECK(variance > 0, "variance must be > 0");
}

// ------------------------------------------------------------------ certified_radius

inline void check_certified_radius(const at::Tensor& feats, const at::Tensor& centers,
                                   const at::Tensor& center_classes, double lipschitz, int64_t mode) {
  check_rows_and_centers(feats, centers, "feats", "centers");
  check_has_centers(centers, "centers");
  TORCH_CHECK(center_classes.dim() == 1 && center_classes.size(0) == centers.size(0),
              "center_classes must have one entry per center");
  TORCH_CHECK(lipschitz > 0, "lipschitz must be > 0");
  TORCH_CHECK(mode == 0 || mode == 1, "mode must be 0 (sound) or 1 (paper)");
}

// ------------------------------------------------------------------ magnet_loss (global form)

// magnet_loss_fwd, magnet_loss_bwd, magnet_loss_fused: feats [N, d], centers [C, d], assign [N],
// classes [C], valid [C].
inline void check_magnet_loss(const at::Tensor& feats, const at::Tensor& centers, const at::Tensor& assign,
                              const at::Tensor& classes, const std::optional<at::Tensor>& valid) {
  check_rows_and_centers(feats, centers, "feats", "centers");
  TORCH_CHECK(assign.dim() == 1 && assign.size(0) == feats.size(0), "assign must have shape [N]");
  TORCH_CHECK(classes.dim() == 1 && classes.size(0) == centers.size(0), "classes must have shape [C]");
  TORCH_CHECK(!valid.has_value() || (valid->dim() == 1 && valid->size(0) == centers.size(0)),
              "valid must have shape [C]");
}

// ------------------------------------------------------------------ magnet_loss_batch

// feats [N, d], ids [N], classes [M]; the batch variance (var_mode 0: no variance tensor, no
// variance value > 0) needs N >= 2; row_weight [N].
inline int magnet_batch_var_mode(const std::optional<at::Tensor>& variance, double variance_value) {
  return variance.has_value() ? 1 : (variance_value > 0 ? 2 : 0);
}

inline void check_magnet_loss_batch(const at::Tensor& feats, const at::Tensor& ids, const at::Tensor& classes,
                                    int var_mode, const std::optional<at::Tensor>& row_weight) {
  check_matrix(feats, "feats");
  TORCH_CHECK(ids.dim() == 1 && ids.size(0) == feats.size(0), "ids must have shape [N]");
  TORCH_CHECK(classes.dim() == 1 && classes.size(0) >= 1, "classes must have shape [M], M >= 1");
  TORCH_CHECK(var_mode != 0 || feats.size(0) >= 2, "feats needs at least 2 rows for the batch variance");
  if (row_weight.has_value())
    TORCH_CHECK(row_weight->dim() == 1 && row_weight->size(0) == feats.size(0), "row_weight must have shape [N]");
}

}  // namespace clustr_fast
