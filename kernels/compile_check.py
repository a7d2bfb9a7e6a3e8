"""Compile the attention kernels for a GPU architecture without a GPU.

The interpreter checks what the kernels compute, not that the compiler accepts them (type
rules of branches inside loops, layouts, shared memory). This lowers every kernel to a
cubin for e.g. sm_90 with triton's bundled ptxas, so CI machines without a GPU catch those
errors too. Must run in a process where TRITON_INTERPRET is not 1.

    python -c "from agentfast.attention.backends.triton_fused import load_kernels; \\
               load_kernels(); from agentfast.kernels.compile_check import main; main()"
"""

from __future__ import annotations

import argparse
import itertools

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from agentfast.kernels import flash_attention as fa

_POINTERS = {
    "Lse": "*fp32", "Delta": "*fp32", "SeqLens": "*i32", "AgentIds": "*i32", "Bitmask": "*i64",
    "KeyPresent": "*i64", "QuerySeesAny": "*i64", "QuerySeesAll": "*i64",
    "Present": "*i64", "SeesAny": "*i64", "SeesAll": "*i64",
}
_TENSORS = ("Q", "K", "V", "Out", "DOut", "DQ", "DK", "DV")
_FLOATS = ("scale", "scale_log2")


def _signature(kernel, dtype: str, constexprs: dict) -> dict[str, str]:
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in _TENSORS:
            signature[name] = f"*{dtype}"
        else:
            signature[name] = _POINTERS.get(name, "fp32" if name in _FLOATS else "i32")
    return signature


def compile_kernel(kernel, dtype: str, constexprs: dict, arch: int, num_warps: int = 4,
                   num_stages: int = 3) -> int:
    """Compile one kernel (autotuned or plain) and return its shared memory in bytes."""
    jit_fn = kernel.fn if hasattr(kernel, "configs") else kernel
    source = ASTSource(jit_fn, _signature(jit_fn, dtype, constexprs), constexprs)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    return compiled.metadata.shared


def compile_all(arch: int = 90, dtypes: tuple[str, ...] = ("fp16",), head_dims: tuple[int, ...] = (40,),
                verbose: bool = False) -> None:
    """Compile forward, dq, dk/dv (every mask combination), delta and the agent summaries."""
    if fa.INTERPRETED:
        raise RuntimeError("TRITON_INTERPRET=1 was set when the kernels were imported; nothing to compile")
    masks = [(True, False, False), (False, True, True), (True, True, True)]
    for dtype, head_dim, (causal, seq_lens, agents) in itertools.product(dtypes, head_dims, masks):
        static = dict(HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)), CAUSAL=causal,
                      HAS_SEQ_LENS=seq_lens, HAS_AGENTS=agents, SUMMARY=fa.SUMMARY_BLOCK,
                      DOT_PRECISION="ieee" if dtype == "fp32" else "tf32")
        for kernel, block_m, block_n in ((fa._forward_kernel, 64, 64), (fa._dq_kernel, 64, 32),
                                         (fa._dkdv_kernel, 32, 64)):
            shared = compile_kernel(kernel, dtype, {**static, "BLOCK_M": block_m, "BLOCK_N": block_n}, arch)
            if verbose:
                print(f"{kernel.fn.__name__} {dtype} D={head_dim} causal={causal} seq_lens={seq_lens} "
                      f"agents={agents}: {shared} B shared")
    compile_kernel(fa._agent_summary_kernel, "fp32", {"SUMMARY": fa.SUMMARY_BLOCK}, arch)
    compile_kernel(fa._delta_kernel, dtypes[0], {"HEAD_DIM": head_dims[0], "BLOCK_D": 64, "BLOCK_M": 64}, arch)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Compile the attention kernels without a GPU.")
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 80 or 90")
    parser.add_argument("--dtypes", default="fp16", help="comma-separated: fp32,fp16,bf16")
    parser.add_argument("--head-dims", default="40", help="comma-separated head dims")
    args = parser.parse_args(argv)
    compile_all(args.arch, tuple(args.dtypes.split(",")), tuple(int(d) for d in args.head_dims.split(",")),
                verbose=True)
    print("all kernels compiled")


if __name__ == "__main__":
    main()
