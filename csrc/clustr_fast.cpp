// clustr_fast._C: the C++ and CUDA kernels of the clustr_fast ops. The ops' schemas are defined
// once, in Python (clustr_fast/ops/<op>.py, through clustr_fast/ops/_library.py); this library
// registers kernels for them per dispatch key: csrc/cpu/<op>.cpp (CPU), csrc/cuda/<op>.cu (CUDA)
// and csrc/autograd.cpp (Autograd, every device). The module has no pybind: importing
// clustr_fast._C only loads the shared library so that the TORCH_LIBRARY_IMPL blocks run.
//
// Precision codes (positions in clustr_fast._validate.PRECISIONS): 0 = highest (IEEE fp32 or
// 3xTF32), 1 = high (TF32 products allowed), 2 = medium (bf16 products allowed).
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", /*doc=*/nullptr, /*size=*/-1, /*methods=*/nullptr};
  return PyModule_Create(&module_def);
}
}
