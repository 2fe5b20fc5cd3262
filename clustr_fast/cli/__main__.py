"""``python -m clustr_fast.cli``: the same as ``clustr-fast``."""
import sys

from . import main

sys.exit(main())
