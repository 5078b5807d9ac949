"""``pimm-fast export --checkpoint DIR --out model.pt2``: a run's model as an AOTInductor package
(pimm_fast/export.py)."""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Union

from .. import export
from ..errors import UsageError
from .run import load_run_model, open_run, run_model, vocabulary_data


def model_from_checkpoint(directory: Union[str, os.PathLike], device: str = "cpu"):
    """(model, field_names, vocabulary) of a training run directory (its best epoch where the run kept one).
    A run with a vocabulary is rebuilt from it alone, without reading its data; an older run (or one with
    multi-valued fields, rebuilt from its raw files) as ``pimm-fast evaluate`` rebuilds it (:func:`.run.load_run_model`)."""
    run = open_run(Path(directory))
    vocabulary = run.vocabulary
    if vocabulary is not None and not vocabulary.bag_fields:
        model = run_model(run, vocabulary_data(vocabulary), device)
        return model.eval(), list(vocabulary.field_names), vocabulary
    model, _, _, test, splits = load_run_model(Path(directory), None, device)
    names = list(splits.field_names) + list(test.bag_names)  # single-valued fields, then the bags
    names = names if names and len(names) == len(test.model_field_dims) else None
    return model.to(device).eval(), names, vocabulary


def cmd_export(args: argparse.Namespace) -> int:
    """``pimm-fast export``: a run's checkpoint -> an AOTInductor package, with the run's vocabulary."""
    if args.out.suffix != ".pt2":
        raise UsageError(f"--out must name a .pt2 file, got {args.out}")
    model, field_names, vocabulary = model_from_checkpoint(args.checkpoint, args.device)
    started = time.perf_counter()
    try:
        export.save(model, args.out, backend=args.backend, field_names=field_names, vocabulary=vocabulary)
    except export.ExportError as err:
        raise UsageError(str(err)) from None
    meta = export.read_metadata(args.out)
    bags = f" ({meta['num_bag_fields']} of them bags)" if meta["num_bag_fields"] else ""
    print(f"exported {meta['model_class']} ({len(meta['field_dims'])} fields{bags}, tasks "
          f"{' -> '.join(meta['task_names'])}, backend {meta['backend']} on {meta['device']}"
          f"{'' if vocabulary is None else ', with its vocabulary'}) to {args.out} in "
          f"{time.perf_counter() - started:.0f} s")
    return 0
