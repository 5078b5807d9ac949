"""``python -m pimm_fast``: the command line, with pimm_fast's runtime defaults (pimm_fast/runtime.py)."""
import sys

from .runtime import main

sys.exit(main())
