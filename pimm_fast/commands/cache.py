"""``pimm-fast cache list | clear``: the cache of preprocessed data files (pimm_fast/data/cache.py)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..data import cache
from ..errors import UsageError


def cmd_cache(args: argparse.Namespace) -> int:
    root = Path(args.cache_dir) if args.cache_dir else cache.default_cache_root()
    if args.action == "list":
        if args.names:
            raise UsageError("cache list takes no names")
        listed = cache.entries(root)
        total = sum(e["bytes"] for e in listed)
        print(f"{root}: {len(listed)} entr{'y' if len(listed) == 1 else 'ies'}, {total / 2**20:,.1f} MiB "
              f"(limit {cache.max_bytes() / 2**30:,.1f} GiB; least recently used first)")
        for e in listed:
            print(f"  {e['name']}  {e['bytes'] / 2**20:>10,.1f} MiB  used "
                  f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(e['last_used']))}  {e['spec']}")
        return 0
    try:
        removed = cache.clear(root, args.names or None)
    except ValueError as err:
        raise UsageError(str(err)) from None
    print(f"{root}: removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'}")
    return 0
