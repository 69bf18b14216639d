"""Compile the fused renderer's Triton kernels for a GPU target without a GPU.

The interpreter (``TRITON_INTERPRET=1``) accepts programs the compiler rejects and says nothing
about registers; this runs the real pipeline (AST -> TTIR -> TTGIR -> LLVM -> PTX -> cubin) for
``sm_90`` and reports, per kernel, ptxas's register and spill figures and the tensor-core
instructions in the SASS. Run it without ``TRITON_INTERPRET``::

    python tools/check_triton_compile.py --planes bf16 --warps 8 --rays 16

Exits non-zero when a kernel fails to compile.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time


def _signature(fn, pointer_types: dict[str, str], floats: tuple[str, ...]) -> dict[str, str]:
    sig = {}
    for param in fn.params:
        name = param.name
        if param.is_constexpr:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = pointer_types.get(name, "*fp32")
        elif name in floats:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def _ptxas_report(bin_dir: str, ptx: str) -> tuple[str, collections.Counter]:
    with tempfile.TemporaryDirectory() as tmp:
        src, cubin = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
        with open(src, "w") as f:
            f.write(ptx)
        for ptxas in ("ptxas-blackwell", "ptxas"):
            path = os.path.join(bin_dir, ptxas)
            run = subprocess.run(
                [path, "-arch=sm_90a", "-v", src, "-o", cubin], capture_output=True, text=True
            )
            if run.returncode == 0:
                break
        else:
            return "ptxas failed: " + run.stderr.strip().splitlines()[-1], collections.Counter()
        info = " ".join(
            line.split("info    :")[-1].strip()
            for line in run.stderr.splitlines()
            if "registers" in line or "spill" in line
        )
        sass = subprocess.run(
            [os.path.join(bin_dir, "cuobjdump"), "-sass", cubin], capture_output=True, text=True
        ).stdout
    return info, collections.Counter(re.findall(r"\b(H?G?MMA[.A-Z0-9]*)", sass))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--planes", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--warps", type=int, default=8)
    parser.add_argument("--rays", type=int, default=16, help="BLOCK_R")
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--out", type=int, default=32)
    parser.add_argument("--triplane", action="store_true", help="bilinear (default: tri-grid)")
    parser.add_argument("--deterministic", action="store_true")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: the interpreter does not compile", file=sys.stderr)
        return 2

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from portrait_engine.kernels import render

    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    constexprs = dict(
        P=3,
        TRILINEAR=not args.triplane,
        HAS_NOISE=True,
        USE_CROP=True,
        WHITE_BACK=True,
        SCALE_RGB=True,
        FULL_WEIGHTS=True,
        HALF_DOT=args.planes != "fp32",
        DOT_PRECISION="tf32",
        BLOCK_R=args.rays,
        BLOCK_C=render._pow2(args.channels),
        BLOCK_H=render._pow2(args.hidden),
        BLOCK_O=render._pow2(args.out),
        DETERMINISTIC=args.deterministic,
    )
    failed = False
    for fn in (render._render_forward_kernel, render._render_backward_kernel):
        names = [p.name for p in fn.params]
        values = {(names.index(k),): v for k, v in constexprs.items() if k in names}
        sig = _signature(fn, {"planes_ptr": "*" + args.planes}, ("crop_limit",))
        start = time.time()
        try:
            kernel = triton.compile(
                ASTSource(fn=fn, signature=sig, constexprs=values),
                target=GPUTarget("cuda", 90, 32),
                options={"num_warps": args.warps, "num_stages": 1},
            )
        except Exception as error:  # noqa: BLE001 -- report every kernel, then fail
            print(f"{fn.__name__}: FAILED to compile: {error}")
            failed = True
            continue
        info, mma = _ptxas_report(bin_dir, kernel.asm["ptx"])
        print(
            f"{fn.__name__}: compiled in {time.time() - start:.0f} s, "
            f"shared {kernel.metadata.shared} B; {info}; "
            + (", ".join(f"{n} x{c}" for n, c in sorted(mma.items())) or "no tensor-core ops")
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
