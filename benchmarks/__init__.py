"""The benchmarks of napari-lvit, each a module run from the repository root::

    python -m benchmarks.bench_models --help

Every one writes :func:`benchmarks._common.header` first in its JSON (``benchmarks/out/``) and
its printout. Not part of the installed package.
"""
