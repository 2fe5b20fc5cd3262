// clustr_fast._C: every kernel schema of the extension lives here.
// Implementations register per dispatch key in csrc/cpu/<op>.cpp (CPU) and
// csrc/cuda/<op>.cu (CUDA). The module has no pybind: importing clustr_fast._C
// only loads the shared library so that the TORCH_LIBRARY blocks run.
#include <Python.h>
#include <torch/library.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", /*doc=*/nullptr, /*size=*/-1, /*methods=*/nullptr};
  return PyModule_Create(&module_def);
}
}

// Precision codes used by every schema below (positions in clustr_fast._validate.PRECISIONS):
// 0 = highest (IEEE fp32 or 3xTF32), 1 = high (TF32 products allowed), 2 = medium (bf16 products allowed).
TORCH_LIBRARY(clustr_fast_C, m) {
  // ---- pairwise_sqdist ----------------------------------------------------
  // out[i,k] = max(||x_i||^2 + ||c_k||^2 - 2 x_i.c_k, 0); float32 out for half inputs.
  m.def("pairwise_sqdist(Tensor x, Tensor c, int precision) -> Tensor");
  // grad_x = 2 (rowsum(g) * x - g c), grad_c = 2 (colsum(g) * c - g^T x), in the inputs' dtypes.
  m.def("pairwise_sqdist_backward(Tensor grad, Tensor x, Tensor c, int precision) -> (Tensor, Tensor)");
  // ---- magnet_loss --------------------------------------------------------
  // Per-row losses [N] and stats [3, N] = (own, logsumexp over impostors (-inf if none),
  // softmax-weighted impostor distance) in the accumulation dtype. valid [C] (optional)
  // removes centers from every impostor set; var is a 0-d tensor (sigma^2).
  m.def("magnet_loss_fwd(Tensor feats, Tensor centers, Tensor assign, Tensor classes, Tensor? valid, Tensor var, float alpha, float eps) -> (Tensor, Tensor)");
  // (grad_feats, grad_centers, grad_var) for the gradient [N] of the per-row losses.
  m.def("magnet_loss_bwd(Tensor grad, Tensor feats, Tensor centers, Tensor assign, Tensor classes, Tensor? valid, Tensor var, Tensor loss, Tensor stats, float alpha, float eps) -> (Tensor, Tensor, Tensor)");
  // Global form with its gradient in one pass (reduction mean/sum): total = weight * sum_i loss_i and
  // (grad_feats, grad_centers, grad_var) of total. var absent: sigma^2 is the cluster variance of
  // (feats, centers, assign) and its gradient is folded into the two others (grad_var = 0).
  // CPU only (other devices run fwd + bwd).
  m.def("magnet_loss_fused(Tensor feats, Tensor centers, Tensor assign, Tensor classes, Tensor? valid, Tensor? var, float alpha, float eps, float weight) -> (Tensor, Tensor, Tensor, Tensor)");
  // Batch form, fused: means of the batch clusters, sigma^2 (variance tensor, else variance_value > 0,
  // else the batch variance), per-row losses [N], total = sum_i w_i loss_i (w = row_weight, else
  // weight) and, with with_grad, d total / d feats [N, d] (else [0, d]), through means and sigma^2.
  m.def("magnet_loss_batch(Tensor feats, Tensor ids, Tensor classes, Tensor? variance, float variance_value, float alpha, float eps, Tensor? row_weight, float weight, bool with_grad) -> (Tensor, Tensor, Tensor)");
  // ---- soft_cluster_logits / certified_radius ------------------------------
  // out[i,c] = log_softmax over classes of logsumexp_{top-D j of class c}(-d_ij / (2 variance));
  // -inf for classes with no selected center. Returns (out [N,L] acc dtype, idx [N,D] int64).
  m.def("soft_cluster_logits(Tensor feats, Tensor centers, Tensor center_classes, int num_classes, float variance, int top_d, int precision) -> (Tensor, Tensor)");
  // (grad_feats, grad_centers) in the inputs' dtypes; only the centers in idx carry gradient.
  m.def("soft_cluster_logits_backward(Tensor grad, Tensor out, Tensor idx, Tensor feats, Tensor centers, Tensor center_classes, float variance) -> (Tensor, Tensor)");
  // [N] radius of the nearest-center classifier; mode 0 = sound (min over other-class bisectors), 1 = paper.
  m.def("certified_radius(Tensor feats, Tensor centers, Tensor center_classes, float lipschitz, int mode) -> Tensor");
  // ---- kmeans -------------------------------------------------------------
  // labels[i] = argmin_k ||x_i - c_k||^2 (first minimum), sqdist[i] = that minimum (accumulation dtype).
  // With groups: row i only sees centers [groups[i]*group_k, (groups[i]+1)*group_k).
  m.def("kmeans_assign(Tensor x, Tensor centers, int precision, Tensor? groups, int group_k) -> (Tensor, Tensor)");
  // centers[j] = sum_{labels_i = j} w_i x_i / W_j, W_j = sum_{labels_i = j} w_i (w = 1 without weights;
  // prev_centers[j], else 0, when W_j = 0), and counts int64[k] (without weights) or W [k] (accumulation dtype).
  m.def("kmeans_update(Tensor x, Tensor labels, int k, Tensor? prev_centers, bool deterministic, Tensor? weights=None) -> (Tensor, Tensor)");
  // Greedy k-means++ in every segment [offsets[g], offsets[g+1]) of x: first[g] is the first row,
  // draws [k-1, G, T] the uniforms of the T local trials of each later step; with weights [N] the
  // candidates are drawn by w_i D_i^2 and the potential is sum_i w_i D_i^2. -> indices int64 [G, k].
  m.def("kmeans_plusplus(Tensor x, Tensor offsets, int k, Tensor first, Tensor draws, Tensor? weights=None) -> Tensor");
  // One Lloyd step in one pass: (labels, sqdist) = kmeans_assign(x, centers, ...), and
  // (new_centers, counts) = kmeans_update(x, labels, K, prev_centers=centers, weights). CPU only.
  m.def("kmeans_lloyd_step(Tensor x, Tensor centers, int precision, Tensor? groups, int group_k, Tensor? weights=None) -> (Tensor, Tensor, Tensor, Tensor)");
  // Lloyd's algorithm to convergence in every segment [offsets[g], offsets[g+1]) of x from the
  // centers [g*k, (g+1)*k), each segment stopping on its own (labels unchanged, or center shift
  // <= tol * mean feature variance of the segment). -> (labels int64 [N] = g*k + j, sqdist [N],
  // centers [G*k, d], n_iter int64 [G]). CPU only (other devices run the step ops).
  m.def("kmeans_lloyd_groups(Tensor x, Tensor offsets, Tensor centers, int max_iter, float tol, int precision) -> (Tensor, Tensor, Tensor, Tensor)");
  // kmeans_plusplus (greedy, from first [G] and draws [k-1, G, T]) then kmeans_lloyd_groups, in every
  // segment while it sits in cache. -> (labels, sqdist, centers [G*k, d], n_iter [G]). CPU only.
  m.def("kmeans_fit_groups(Tensor x, Tensor offsets, int k, Tensor first, Tensor draws, int max_iter, float tol, int precision) -> (Tensor, Tensor, Tensor, Tensor)");
}
