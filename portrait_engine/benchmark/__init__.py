"""The benchmark harness behind ``portrait-engine bench`` and ``benchmarks/``.

It lives in the package (not only in the repository's ``benchmarks/`` folder) so that the
command works from an installed wheel; ``benchmarks/`` holds the scripts, the
pytest-benchmark entry points and the committed results.
"""

from portrait_engine.benchmark.runner import BenchConfig, run_benchmarks

__all__ = ["BenchConfig", "run_benchmarks"]
