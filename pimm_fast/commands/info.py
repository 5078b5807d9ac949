"""``pimm-fast info``: what was built and which backends can run."""
from __future__ import annotations

import argparse
import json


def cmd_info(_: argparse.Namespace) -> int:
    import pimm_fast

    print(json.dumps(pimm_fast.build_info(), indent=2))
    return 0
