"""The static kernel report (benchmarks/static_sm90.py) reads machine code correctly.

The SASS reader is checked on hand-written listings whose loops and paths are known; the
whole report runs on one small configuration (the agent-masked Triton forward kernel, fp16,
head dim 64, for sm_90 and sm_80, plus a tiny CUDA kernel) and its figures are checked
against facts that do not come from the SASS: the tensor-core FLOPs a loop iteration does
must equal the FLOPs of the tile the kernel computes, HMMA m16n8k16 count per iteration must
equal those FLOPs / 4096 per warp, and so on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import sass_analysis as sa  # noqa: E402

# A loop with a skip branch, a masked and an unmasked tile variant, a divergence-only detour
# (BRA.DIV to out-of-line code that jumps back into the loop) and an unreachable self-loop.
LISTING = """
//--------------------- .text.kernel     --------------------------
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/               @P0 EXIT ;
.L_x_0:
        /*0020*/                   LDG.E R2, desc[UR4][R4.64] ;
        /*0030*/                   BRA.DIV UR5, `(.L_x_9) ;
.L_x_8:
        /*0040*/              @!P1 BRA `(.L_x_1) ;
        /*0050*/               @P2 BRA `(.L_x_2) ;
        /*0060*/                   HMMA.16816.F32 R8, R12, R16, R8 ;
        /*0070*/                   HMMA.16816.F32 R8, R12, R18, R8 ;
        /*0080*/                   BRA `(.L_x_1) ;
.L_x_2:
        /*0090*/                   ISETP.GE.AND P3, PT, R2, R3, PT ;
        /*00a0*/                   FSEL R8, R8, -INF , P3 ;
        /*00b0*/                   HMMA.16816.F32 R8, R12, R16, R8 ;
        /*00c0*/                   HMMA.16816.F32 R8, R12, R18, R8 ;
        /*00d0*/                   NOP ;
.L_x_1:
        /*00e0*/                   IADD3 R4, R4, 0x80, RZ ;
        /*00f0*/              @!P4 BRA `(.L_x_0) ;
        /*0100*/                   EXIT ;
.L_x_9:
        /*0110*/                   WARPSYNC.ALL ;
        /*0120*/                   BRA `(.L_x_8) ;
.L_x_10:
        /*0130*/                   BRA `(.L_x_10);
"""


def test_loop_paths_of_a_hand_written_listing():
    code = sa.parse_sass(LISTING)["kernel"]
    loops = sa.innermost_loops(code)
    # Neither the detour's backward jump nor the unreachable self-loop after EXIT is a loop.
    assert [(loop.head, loop.back_edge) for loop in loops] == [(0x20, 0xF0)]
    loop = loops[0]
    by_mma = sorted((p.instructions, p.mma) for p in loop.paths)
    # skip: LDG, BRA.DIV, @!P1 BRA, IADD3, back edge; unmasked: + @P2 BRA, 2 HMMA, BRA;
    # masked: + @P2 BRA, ISETP, FSEL, 2 HMMA (the NOP is not counted).
    assert by_mma == [(5, 0), (9, 2), (10, 2)]
    unmasked, masked = loop.compute_paths
    assert unmasked.flops_per_warp == masked.flops_per_warp == 2 * 2 * 16 * 8 * 16
    assert masked.warp_instructions_per_mflop == pytest.approx(10 / (8192 / 1e6))
    assert unmasked.load_mode == "LDG to registers"


def test_tensor_core_shapes_and_occupancy():
    hgmma = sa.Instruction(0, "", "HGMMA.64x128x16.F32.BF16", "R24, gdesc[UR4], R24")
    hmma = sa.Instruction(0, "", "HMMA.1688.F32.TF32", "R4, R8, R12, R4")
    assert sa.mma_flops_per_warp(hgmma) == 2 * 64 * 128 * 16 // 4
    assert sa.mma_flops_per_warp(hmma) == 2 * 16 * 8 * 8
    assert sa.mma_flops_per_warp(sa.Instruction(0, "", "FFMA", "R1, R2, R3, R4")) == 0
    # 128 registers x 256 threads = 32768 -> 2 blocks by registers; 100 KB shared -> 2 blocks.
    assert sa.blocks_per_sm(90, 128, 256, 100 * 1024)["blocks"] == 2
    assert sa.blocks_per_sm(90, 168, 256, 32 * 1024) == {"blocks": 1, "limited_by": "registers", "warps_per_sm": 8}
    assert sa.blocks_per_sm(80, 32, 128, 0)["blocks"] == 16  # by threads: 2048 / 128


def test_cuda_attention_kernels_are_labelled_from_their_template_arguments():
    import static_sm90

    labels = static_sm90._cuda_labels("dkdv_kernel<__nv_bfloat16, 128, 64, 32, 4, 1, false, 2>", 4)
    assert labels == {"dtype": "bf16", "head_dim": 128, "config": "64x32 w4"}
    assert static_sm90._cuda_labels("tile_list_kernel", 4) == {}
    # Their tile walk is two tensor-core loops, partial tiles then full tiles; other shapes
    # stay unnamed rather than misnamed.
    assert static_sm90._cuda_loop_names("forward_kernel<__half, 64, 128, 64, 4, false, 2>", 2) == ["partial", "full"]
    assert static_sm90._cuda_loop_names("forward_kernel<__half, 64, 128, 64, 4, false, 2>", 1) is None
    assert static_sm90._cuda_loop_names("tiny_wmma_loop", 2) is None


TINY_CUDA = r"""
#include <cuda_fp16.h>
#include <mma.h>
using namespace nvcuda;
// One warp, one 16x16x16 wmma product per iteration: 2 x HMMA.16816 (m16n8k16).
__global__ void __launch_bounds__(32) tiny_wmma_loop(const half* a, const half* b, float* c, int steps) {
  wmma::fragment<wmma::matrix_a, 16, 16, 16, half, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, half, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 0.0f);
#pragma unroll 1
  for (int i = 0; i < steps; ++i) {
    wmma::load_matrix_sync(fa, a + i * 256, 16);
    wmma::load_matrix_sync(fb, b + i * 256, 16);
    wmma::mma_sync(acc, fa, fb, acc);
  }
  wmma::store_matrix_sync(c, acc, 16, wmma::mem_row_major);
}
"""


def _tools_present(*tools: str) -> bool:
    try:
        for tool in tools:
            sa.find_tool(tool)
    except sa.ToolMissing:
        return False
    return True


TRITON_TOOLS = ("nvdisasm", "cuobjdump", "ptxas")  # in the triton wheel (triton/backends/nvidia/bin)


@pytest.mark.skipif(not _tools_present(*TRITON_TOOLS), reason="needs the CUDA tools the triton wheel ships")
def test_report_on_one_small_configuration(tmp_path):
    """The Triton part needs only the triton wheel; the CUDA part (a tiny kernel) runs where
    nvcc is installed."""
    with_cuda = _tools_present("nvcc")
    source = tmp_path / "tiny.cu"
    source.write_text(TINY_CUDA)
    out = tmp_path / "report"
    command = [sys.executable, str(ROOT / "benchmarks" / "static_sm90.py"), "--archs", "90,80", "--dtypes", "fp16",
               "--head-dims", "64", "--masks", "agents", "--shapes", "prefill", "--configs", "primary",
               "--kernels", "forward", "--groups", "1", "--jobs", "2", "--out", str(out),
               *(["--cuda-sources", str(source)] if with_cuda else ["--parts", "triton"])]
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads((out / "static.json").read_text())
    assert (out / "static.md").read_text().count("| forward |") >= 6
    assert (out / "static.png").stat().st_size > 0

    forward = {row["arch"]: row for row in report["rows"] if row["source"] == "triton"}
    assert set(forward) == {"sm_90", "sm_80"}
    for arch, row in forward.items():
        assert "error" not in row, row
        assert row["registers"] > 0 and row["threads"] == 32 * row["num_warps"]
        assert row["shared_bytes"] > 0 and row["blocks_per_sm"] >= 1
        block_m, block_n = (int(x) for x in row["config"].split()[0].split("x"))
        tile_flops = 4 * block_m * block_n * 64  # QK^T and PV of one tile
        names = [path["path"] for path in row["paths"]]
        assert names == ["full", "partial", "diagonal"], names
        for path in row["paths"]:
            assert path["flops_check"] and path["tensor_core_flops_per_warp"] * row["num_warps"] == tile_flops
            assert path["warp_instructions_per_mflop"] == pytest.approx(
                path["instructions"] / (path["tensor_core_flops_per_warp"] / 1e6), rel=1e-3)
            opcodes = path["tensor_core_opcodes"]
            if arch == "sm_80":
                assert set(opcodes) == {"HMMA.16816.F32"}
                assert path["tensor_core_instructions"] * 4096 * row["num_warps"] == tile_flops
            else:
                assert all(op.startswith("HGMMA.64x") for op in opcodes)
        # The masked paths do more work per tile than the unmasked one.
        full, partial, diagonal = row["paths"]
        assert full["instructions"] < partial["instructions"] and full["instructions"] < diagonal["instructions"]

    tiny = [row for row in report["rows"] if row["source"] == "cuda"]
    assert {row["arch"] for row in tiny} == ({"sm_90", "sm_80"} if with_cuda else set())
    if with_cuda:  # one summary line per CUDA kernel: one path, 2 HMMA per iteration
        assert "| tiny_wmma_loop | sm_90 | " in (out / "static.md").read_text()
        assert "| 1 | " in (out / "static.md").read_text().split("| tiny_wmma_loop | sm_80 | ")[1].splitlines()[0]
    for row in tiny:
        assert row["kernel"] == "tiny_wmma_loop" and row["threads"] == 32 and row["blocks_per_sm"] >= 1
        (loop,) = row["paths"]
        assert loop["tensor_core_opcodes"] == {"HMMA.16816.F32": 2}
        assert loop["tensor_core_flops_per_warp"] == 2 * 16 * 16 * 16

    # Runs made separately (here: one per architecture) merge into one report.
    import static_sm90

    parts = []
    for arch in ("sm_90", "sm_80"):
        part = tmp_path / f"{arch}.json"
        rows = [row for row in report["rows"] if row["arch"] == arch]
        meta = {**report["meta"], "argv": f"--archs {arch[3:]}", "seconds": 2}
        part.write_text(json.dumps(dict(meta=meta, rows=rows)))
        parts.append(part)
    merged_out = tmp_path / "merged"
    assert static_sm90.main(["--from-json", *map(str, parts), "--out", str(merged_out)]) == 0
    merged = json.loads((merged_out / "static.json").read_text())
    by_arch = [r for arch in ("sm_90", "sm_80") for r in report["rows"] if r["arch"] == arch]
    assert merged["rows"] == by_arch
    assert merged["meta"]["seconds"] == 4 and merged["meta"]["tools"] == report["meta"]["tools"]
    text = (merged_out / "static.md").read_text()
    assert "`python benchmarks/static_sm90.py --archs 90` and `python benchmarks/static_sm90.py --archs 80`" in text
    assert text.count("| forward |") == (out / "static.md").read_text().count("| forward |")
