"""Custom ops (``torch.ops.clustr_fast.*``) and the public functions that call them.

Each module validates its inputs, registers its forward and backward as
``torch.library.custom_op`` with ``register_fake`` and ``register_autograd``,
and dispatches at run time to one backend (see ``clustr_fast._backend``).
"""
