"""The ``pimm-fast`` console entry (pyproject.toml) and ``python -m pimm_fast``: the command line
(pimm_fast/cli.py) with pimm_fast's OpenMP defaults and thread count (pimm_fast/runtime.py)."""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from .runtime import configure_threads, relaunch_with_defaults


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The ``pimm-fast`` command: the CLI with pimm_fast's OpenMP defaults and thread count."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] not in ("info", "-h", "--help"):  # commands that compute
        relaunch_with_defaults(args)
        configure_threads()  # the CLI's --threads, when given, overrides this
    from .cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
