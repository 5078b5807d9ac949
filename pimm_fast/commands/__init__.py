"""The bodies of the ``pimm-fast`` commands, one module each, between pimm_fast/cli.py (which declares the
options and dispatches here) and the library (data, models, train, distributed, export), which never
imports them (docs/architecture.md, tests/test_layers.py).

``run``: what every command shares (the run configuration, loading data, building a model, reading a run
directory back); ``train``, ``distributed`` (train --distributed), ``compare``, ``predict`` (evaluate and
predict), ``export``, ``info``, ``cache``: one command each.
"""
