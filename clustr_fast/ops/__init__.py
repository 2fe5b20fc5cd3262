"""The ops ``torch.ops.clustr_fast.*`` and the public functions that call them.

Each module defines its ops once (``_library.define``: schema, fake, Python kernels),
validates the inputs of its public functions and calls the ops; the C++ kernels and the
autograd of the differentiable ops come from the extension (csrc/), and which kernel a
device runs is chosen by ``clustr_fast._backend``.
"""
