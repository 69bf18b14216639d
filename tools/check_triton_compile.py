"""Compile the fused renderer's Triton kernels for a GPU target without a GPU.

The interpreter (``TRITON_INTERPRET=1``) accepts programs the compiler rejects and says nothing
about registers; this runs the real pipeline (AST -> TTIR -> TTGIR -> LLVM -> PTX -> cubin) for
``sm_90`` and reports, per kernel, ptxas's register and spill figures and the tensor-core
instructions in the SASS. Run it without ``TRITON_INTERPRET``::

    python tools/check_triton_compile.py --planes bf16 --warps 8 --rays 16
    python tools/check_triton_compile.py --kernels triplane attention_pool
    python tools/check_triton_compile.py --kernels importance --planes bf16
    python tools/check_triton_compile.py --kernels merge --planes bf16

It found two things the interpreter cannot: Triton 3.6 (the GPU machine's) rejected the fused
render kernels' tri-grid gather (a layout-pass failure, fixed in kernels/triplane.py), and it
turns a broadcast multiply + sum over an axis into a tensor-core dot (TF32 for fp32): the
"MMA" column of this report shows where.

For the memory-bound copies (``--kernels merge``) it counts the global loads and stores of the
SASS by width (``LDG.E.128`` is a 16-byte vector access): pointers and element counts are
declared 16-divisible, as Triton's launcher specialises them for fresh allocations.

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
    ops = collections.Counter(re.findall(r"\b(H?G?MMA\.[.A-Z0-9]+)", sass))
    ops.update(re.findall(r"\b((?:LDG|STG)\.E(?:\.[A-Z0-9]+)*)", sass))
    return info, ops


def _compile(
    fn,
    constexprs: dict,
    pointer_types: dict,
    floats: tuple,
    warps: int,
    bin_dir: str,
    divisible: tuple = (),
):
    """Compile ``fn`` for sm_90 and print its ptxas figures; returns whether it compiled.
    ``divisible`` names the arguments declared multiples of 16 (pointers: 16-byte aligned)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = [p.name for p in fn.params]
    values = {(names.index(k),): v for k, v in constexprs.items() if k in names}
    sig = _signature(fn, pointer_types, floats)
    start = time.time()
    label = fn.__name__ + " " + " ".join(f"{k}={v}" for k, v in constexprs.items())
    try:
        kernel = triton.compile(
            ASTSource(
                fn=fn,
                signature=sig,
                constexprs=values,
                attrs={(names.index(k),): [["tt.divisibility", 16]] for k in divisible},
            ),
            target=GPUTarget("cuda", 90, 32),
            options={"num_warps": warps, "num_stages": 1},
        )
    except Exception as error:  # noqa: BLE001 -- report every kernel, then fail
        print(f"{label}: FAILED to compile: {error}")
        return False
    info, mma = _ptxas_report(bin_dir, kernel.asm["ptx"])
    print(
        f"{label} warps={warps}: compiled in {time.time() - start:.0f} s, "
        f"shared {kernel.metadata.shared} B; {info}; "
        + (", ".join(f"{n} x{c}" for n, c in sorted(mma.items())) or "no tensor-core ops")
    )
    return True


def _render(args, bin_dir: str) -> bool:
    from portrait_engine.kernels import render

    constexprs = dict(
        P=3,
        TRILINEAR=not args.triplane,
        HAS_NOISE=True,
        USE_CROP=True,
        WHITE_BACK=True,
        SCALE_RGB=True,
        FULL_WEIGHTS=True,
        HALF_DOT=args.planes != "fp32",
        DOT_PRECISION=args.precision,
        BLOCK_R=args.rays,
        BLOCK_C=render._pow2(args.channels),
        BLOCK_H=render._pow2(args.hidden),
        BLOCK_O=render._pow2(args.out),
        DETERMINISTIC=args.deterministic,
    )
    ok = True
    for fn in (render._render_forward_kernel, render._render_backward_kernel):
        ok &= _compile(
            fn, constexprs, {"planes_ptr": "*" + args.planes}, ("crop_limit",), args.warps, bin_dir
        )
    return ok


def _triplane(args, bin_dir: str) -> bool:
    """The tri-plane sampling kernels at the launcher's blocks for C = 32, 33 and 96."""
    from portrait_engine.kernels import triplane

    ok = True
    for channels in (32, 33, 96):
        for backward, fn in (
            (False, triplane._triplane_forward_kernel),
            (True, triplane._triplane_backward_kernel),
        ):
            # the interpreter branch of _blocks is not taken here (no TRITON_INTERPRET)
            block_n, block_c, warps = triplane._blocks(16384, channels, backward)
            constexprs = dict(
                P=3,
                trilinear=not args.triplane,
                reduce_mean=True,
                nan_propagate=False,
                BLOCK_N=block_n,
                BLOCK_C=block_c,
                EVEN_C=block_c == channels,
            )
            types = {"planes_ptr": "*" + args.planes, "out_ptr": "*" + args.planes}
            ok &= _compile(fn, constexprs, types, (), warps, bin_dir)
    return ok


def _attention_pool(args, bin_dir: str) -> bool:
    """The attention-pool kernels at the launcher's blocks for K = 1, 4, 11 maps."""
    from portrait_engine.kernels import attention_pool as ap

    ok = True
    for maps in (1, 4, 11):
        for backward, fn in (
            (False, ap._attention_pool_forward_kernel),
            (True, ap._attention_pool_backward_kernel),
        ):
            block_k, block_c, block_l, warps = ap._blocks(maps, 512, 49, backward)
            constexprs = dict(BLOCK_K=block_k, BLOCK_C=block_c, BLOCK_L=block_l)
            ok &= _compile(fn, constexprs, {}, (), warps, bin_dir)
    return ok


def _importance(args, bin_dir: str) -> bool:
    """The sample_importance kernel at the launcher's blocks: EG3D's 48 + 48 sorted (the
    in-kernel sort) and unsorted, 128 coarse samples, and many draws (torch.sort, looped)."""
    from portrait_engine.kernels import importance

    ok = True
    types = {"depths_ptr": "*" + args.planes, "weights_ptr": "*" + args.planes}
    types["out_ptr"] = "*" + args.planes
    for samples, draws, sort in (
        (48, 48, True),
        (48, 48, False),
        (128, 48, True),
        (48, 2000, True),
    ):
        block_r, block_s, block_d, in_kernel, warps = importance._importance_blocks(
            65536, samples, draws, sort
        )
        constexprs = dict(
            SORT=sort,
            SORT_IN_KERNEL=in_kernel,
            BLOCK_R=block_r,
            BLOCK_S=block_s,
            BLOCK_D=block_d,
        )
        ok &= _compile(importance._sample_importance_kernel, constexprs, types, (), warps, bin_dir)
    return ok


def _merge(args, bin_dir: str) -> bool:
    """merge_samples' copy kernels at the launcher's block for EG3D's 48 + 48 samples and
    C = 1 (depths) and 33 (colour + density)."""
    from portrait_engine.kernels import importance

    block, warps = importance._copy_block(1 << 30)
    dtype = "*" + args.planes
    ok = True
    for channels in (1, 33):
        constexprs = dict(S1=48, S2=48, C=channels, WIDE=False, BLOCK=block)
        types = {
            "values1_ptr": dtype,
            "values2_ptr": dtype,
            "out_ptr": dtype,
            "grad_ptr": dtype,
            "grad1_ptr": dtype,
            "grad2_ptr": dtype,
            "inverse_ptr": "*i32",
            "positions1_ptr": "*i32",
            "positions2_ptr": "*i32",
        }
        for fn in (importance._merge_scatter_kernel, importance._merge_gather_kernel):
            names = tuple(p.name for p in fn.params if p.name.endswith("_ptr") or p.name == "NUMEL")
            ok &= _compile(fn, constexprs, types, (), warps, bin_dir, divisible=names)
    constexprs = dict(S1=48, S2=48, WIDE=False, BLOCK=block)
    fn = importance._merge_inverse_kernel
    names = tuple(p.name for p in fn.params if p.name.endswith("_ptr"))
    ok &= _compile(fn, constexprs, types, (), warps, bin_dir, divisible=names)
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--kernels",
        nargs="+",
        default=["render"],
        choices=["render", "triplane", "attention_pool", "importance", "merge"],
    )
    parser.add_argument("--planes", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--warps", type=int, default=8)
    parser.add_argument("--rays", type=int, default=16, help="BLOCK_R")
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--out", type=int, default=32)
    parser.add_argument("--precision", default="tf32", choices=("tf32", "ieee"))
    parser.add_argument("--triplane", action="store_true", help="bilinear (default: tri-grid)")
    parser.add_argument("--deterministic", action="store_true")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: the interpreter does not compile", file=sys.stderr)
        return 2

    import triton

    print(f"triton {triton.__version__}")
    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    checks = {
        "render": _render,
        "triplane": _triplane,
        "attention_pool": _attention_pool,
        "importance": _importance,
        "merge": _merge,
    }
    ok = True
    for name in args.kernels:
        ok &= checks[name](args, bin_dir)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
