// clustr_fast._C: the C++ and CUDA kernels of the clustr_fast ops. The ops' schemas are defined
// once, in Python (clustr_fast/ops/<op>.py, through clustr_fast/ops/_library.py); this library
// registers kernels for them per dispatch key: csrc/cpu/<op>.cpp (CPU), csrc/cuda/<op>.cu (CUDA)
// and csrc/autograd.cpp (Autograd, every device). The module has no pybind: importing
// clustr_fast._C loads the shared library so that the TORCH_LIBRARY_IMPL blocks run. Its one
// Python function, magnet_batch_shared_bytes, gives the host the CUDA batch kernel's own
// shared-memory formula (magnet_batch_layout.h), so the rule for running it fused has one source.
//
// Precision codes (positions in clustr_fast._validate.PRECISIONS): 0 = highest (IEEE fp32 or
// 3xTF32), 1 = high (TF32 products allowed), 2 = medium (bf16 products allowed).
#include <Python.h>

#include "magnet_batch_layout.h"

namespace {

// magnet_batch_shared_bytes(n, m, d, acc_size) -> int
PyObject* magnet_batch_shared_bytes(PyObject* /*self*/, PyObject* args) {
  long long n = 0, m = 0, d = 0, acc_size = 0;
  if (!PyArg_ParseTuple(args, "LLLL", &n, &m, &d, &acc_size)) return nullptr;
  return PyLong_FromLongLong(clustr_fast::magnet_batch_shared_bytes(n, m, d, acc_size));
}

PyMethodDef methods[] = {
    {"magnet_batch_shared_bytes", magnet_batch_shared_bytes, METH_VARARGS,
     "Bytes of shared memory the fused CUDA magnet_loss_batch kernel needs for [n, d] rows in m clusters "
     "(acc_size: bytes of the accumulation type)."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", /*doc=*/nullptr, /*size=*/-1, methods};
  return PyModule_Create(&module_def);
}
}
