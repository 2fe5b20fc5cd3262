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

// Precision codes used by every schema below: 0 = highest (IEEE fp32 or 3xTF32),
// 1 = high (TF32 products allowed), 2 = medium (bf16 products allowed).
TORCH_LIBRARY(clustr_fast_C, m) {
  // ---- pairwise_sqdist ----------------------------------------------------
  // out[i,k] = max(||x_i||^2 + ||c_k||^2 - 2 x_i.c_k, 0); float32 out for half inputs.
  m.def("pairwise_sqdist(Tensor x, Tensor c, int precision) -> Tensor");
  // grad_x = 2 (rowsum(g) * x - g c), grad_c = 2 (colsum(g) * c - g^T x), in the inputs' dtypes.
  m.def("pairwise_sqdist_backward(Tensor grad, Tensor x, Tensor c, int precision) -> (Tensor, Tensor)");
  // ---- magnet_loss --------------------------------------------------------
  // (schemas added by the magnet_loss kernels)
  // ---- soft_cluster_logits / certified_radius ------------------------------
  // (schemas added by the soft_cluster_logits kernels)
  // ---- kmeans -------------------------------------------------------------
  // (schemas added by the kmeans kernels)
}
