"""Test setup: Triton's interpreter on machines without a GPU, and the ``cuda`` marker.

``TRITON_INTERPRET=1`` must be in the environment before any ``@triton.jit`` kernel module is
imported (the decorator picks the interpreter then), so it is set here, at collection time,
unless a GPU is present.
"""

import os

import pytest

# Under pytest-xdist (-n 2 on CI's 2 cores) each worker would take torch's and OpenMP's default
# of one thread per core: 4 threads on 2 cores, whose waiting slows both workers (tests/nn and
# test_triplane.py: 142 s with OMP_NUM_THREADS=1 against 159 s, 2026-11-27). Set before torch is
# imported, so OpenMP reads it; tests that need several threads set them themselves.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT") and "OMP_NUM_THREADS" not in os.environ:
    _cores = os.cpu_count() or 1
    _workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ["OMP_NUM_THREADS"] = str(max(1, _cores // _workers))

try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    _HAS_CUDA = False

if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _cache_interpreter_builtin_names():
    """Triton's interpreter re-patches ``triton.language`` on every call of a ``@triton.jit``
    helper from inside a kernel (``InterpretedFunction.__call__`` -> ``_patch_lang``), and each
    patch walks the modules with ``inspect.getmembers``: about 40 % of the fused renderer tests'
    time (tests/nn/test_renderer.py's tri-grid Triton cases: 21 s -> 12 s with this; the render_rays
    registration, Triton and generator tests under -n 2: 113 s -> 88 s; 2026-11-27).

    The walk only looks for the names whose member is a Triton builtin. They are found once per
    module, and the patch then visits those names alone; what is patched, and how, is Triton's
    own code (``_patch_attr``), and a name that is already patched is skipped exactly as the
    original skips it. The one difference: where a module is first walked while ``reduce`` and
    ``associative_scan`` are patched (``_patch_reduce_scan``), those two are left out of its
    list, and the original's extra patch of them is skipped; ``_patch_reduce_scan`` sets both in
    the same ``_patch_lang`` either way (checked against the original on random patch / restore
    sequences, 2026-11-27). Applied only to the interpreter of the
    Triton versions it was checked on; any other version runs unchanged.
    """
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    try:
        import inspect

        import triton
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:  # pragma: no cover
        return
    original = getattr(interpreter, "_patch_builtin", None)
    if (
        not triton.__version__.startswith("3.")
        or original is None
        or list(inspect.signature(original).parameters) != ["pkg", "builder", "scope"]
        or not hasattr(interpreter, "_patch_attr")
    ):
        return  # pragma: no cover
    names = {}

    def patch_builtin(pkg, builder, scope):
        entry = names.get(id(pkg))
        if entry is None or entry[0] is not pkg:
            found = [name for name, member in inspect.getmembers(pkg) if tl.core.is_builtin(member)]
            entry = names[id(pkg)] = (pkg, found)
        for name in entry[1]:
            member = getattr(pkg, name)
            if tl.core.is_builtin(member):
                interpreter._patch_attr(pkg, name, member, builder, scope)

    interpreter._patch_builtin = patch_builtin


_cache_interpreter_builtin_names()


def pytest_collection_modifyitems(config, items):
    if _HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def poison_outputs(monkeypatch):
    """Kernels fill their outputs with NaN before writing, so an unwritten element shows."""
    monkeypatch.setenv("PORTRAIT_ENGINE_POISON_OUTPUTS", "1")
    yield
