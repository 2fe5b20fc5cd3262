"""``clustr_fast.robust.lipschitz`` is :mod:`clustr_fast.models.lipschitz_bound`, the proven upper
bounds on the Lipschitz constant of a network, under the name the evaluation has always used.

The bounds live with the models, below both the training loop (the certified-margin term) and
the evaluation (the certified radius), so neither imports the other. Importing this module
gives that module itself (one module object: its constants, e.g. ``EXACT_LIMIT``, are shared).
"""
import sys

from ..models import lipschitz_bound as _bound

sys.modules[__name__] = _bound
