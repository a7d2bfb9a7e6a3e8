"""Read what the CUDA compiler produced: loops, tensor-core work, memory traffic and occupancy.

Input is a cubin (from Triton or nvcc). ``cuobjdump`` and ``nvdisasm`` turn it into SASS, the
machine code a GPU runs, and resource records (registers, shared and local memory, launch
bounds); nothing here needs a GPU. The tools come from Triton's wheel
(``triton/backends/nvidia/bin``), else from ``$CUDA_HOME/bin`` or ``PATH``: see ``find_tool``.

Loops are found from backward branches. For each innermost loop that holds tensor-core
instructions (HMMA: mma.sync; HGMMA: wgmma), every path from the loop head to its back edge is
counted separately (branches inside a loop body, e.g. a tile that is skipped or masked, give
several paths). ``LoopPath.warp_instructions_per_mflop`` is the figure of merit:

    warp-instructions per tensor-core MFLOP = I / (F / 1e6)

with I the SASS instructions (NOPs excluded) one warp issues on that path in one iteration of
the loop body, and F the tensor-core FLOPs that warp's share of the iteration does (HMMA
m16n8kK: 2*16*8*K per warp; HGMMA 64xNxK is issued by the 4 warps of a warpgroup together:
2*64*N*K/4 per warp). Every warp of a block runs the same loop body, so the ratio is also the
block's warp-instructions per MFLOP. Lower is better: it is the issue-slot cost of feeding the
tensor cores (softmax, masking, address arithmetic, loads, synchronisation).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

# Per-SM limits used by the occupancy estimate (CUDA occupancy calculator figures).
ARCH_LIMITS = {
    80: dict(registers=65536, shared=167936, max_shared_per_block=166912, threads=2048, blocks=32),
    90: dict(registers=65536, shared=233472, max_shared_per_block=232448, threads=2048, blocks=32),
}
RESERVED_SHARED_PER_BLOCK = 1024  # the driver keeps 1 KiB per block on sm_80 and later
REGISTER_UNIT = 256  # registers are granted per warp in units of 256

TMA_OPCODES = {"UTMALDG", "UBLKCP", "UTMAPF"}
CP_ASYNC_OPCODES = {"LDGSTS"}
GLOBAL_LOADS = {"LDG"}
SHARED_LOADS = {"LDS", "LDSM"}
SHARED_STORES = {"STS", "STSM"}
CTA_BARRIERS = {"BAR"}
MBARRIER_OPS = {"SYNCS"}
SPILL_OPCODES = {"LDL", "STL"}


class ToolMissing(RuntimeError):
    """A CUDA binary tool (nvcc, cuobjdump, nvdisasm) is not installed where we look."""


def tool_folders() -> list[Path]:
    """Where the binary tools are looked for, in order: Triton's bundled CUDA tools, then
    $CUDA_HOME/bin (default /usr/local/cuda/bin)."""
    folders = []
    spec = importlib.util.find_spec("triton")
    if spec is not None and spec.origin is not None:
        folders.append(Path(spec.origin).parent / "backends" / "nvidia" / "bin")
    folders.append(Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin")
    return folders


@functools.cache
def find_tool(name: str) -> Path:
    """Path of ``name`` (cuobjdump, nvdisasm, ptxas, nvcc) from ``tool_folders()`` or PATH."""
    for folder in tool_folders():
        candidate = folder / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if found:
        return Path(found)
    raise ToolMissing(f"{name} not found in {', '.join(map(str, tool_folders()))} or on PATH; "
                      "it ships with triton (pip install triton) and with the CUDA toolkit")


def _run(tool: str, *args: str) -> str:
    result = subprocess.run([str(find_tool(tool)), *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{tool} {' '.join(args)} failed: {result.stderr.strip()[-2000:]}")
    return result.stdout


def _with_cubin_file(cubin: bytes | Path, fn):
    if isinstance(cubin, Path):
        return fn(str(cubin))
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        return fn(handle.name)


def demangle(name: str) -> str:
    """C++ names through c++filt when it is there; Triton's plain names stay as they are."""
    if not name.startswith("_Z") or shutil.which("c++filt") is None:
        return name
    return subprocess.run(["c++filt", name], capture_output=True, text=True).stdout.strip() or name


# ----------------------------------------------------------------------------- SASS


@dataclass(frozen=True)
class Instruction:
    address: int
    predicate: str  # "" or e.g. "@!P0"
    opcode: str  # with modifiers, e.g. "HGMMA.64x64x16.F32"
    operands: str

    @property
    def base(self) -> str:
        return self.opcode.split(".", 1)[0]

    @property
    def branch_target(self) -> str | None:
        match = re.search(r"`\((\.L\w+)\)", self.operands)
        return match.group(1) if match and self.base in ("BRA", "JMP") else None


_LINE = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(.*?)\s*;")
_LABEL = re.compile(r"^(\.L\w+):")
_SECTION = re.compile(r"^//-+ \.text\.(\S+)\s+-+")


@dataclass
class Code:
    """The SASS of one function: instructions in address order and label addresses."""

    instructions: list[Instruction] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)


def parse_sass(text: str) -> dict[str, Code]:
    """nvdisasm output -> {function name: Code}."""
    functions: dict[str, Code] = {}
    current: Code | None = None
    pending_labels: list[str] = []
    for line in text.splitlines():
        section = _SECTION.match(line)
        if section:
            current = functions.setdefault(section.group(1), Code())
            pending_labels = []
            continue
        if current is None:
            continue
        label = _LABEL.match(line)
        if label:
            pending_labels.append(label.group(1))
            continue
        match = _LINE.match(line)
        if not match:
            continue
        address = int(match.group(1), 16)
        body = match.group(2).strip()
        predicate = ""
        if body.startswith("@"):
            predicate, body = body.split(None, 1)
        opcode, _, operands = body.partition(" ")
        current.instructions.append(Instruction(address, predicate, opcode, operands.strip()))
        for name in pending_labels:
            current.labels[name] = address
        pending_labels = []
    return functions


def disassemble(cubin: bytes | Path) -> dict[str, Code]:
    return parse_sass(_with_cubin_file(cubin, lambda path: _run("nvdisasm", "-c", path)))


@dataclass
class Resources:
    registers: int = 0
    shared_static: int = 0
    local_bytes: int = 0
    stack_bytes: int = 0
    threads: int | None = None  # from launch bounds (__launch_bounds__ / Triton's reqntid)


def resources(cubin: bytes | Path) -> dict[str, Resources]:
    """Per function: registers, static shared memory, local memory (spills), launch bounds."""
    def read(path: str) -> dict[str, Resources]:
        usage = _run("cuobjdump", "-res-usage", path)
        found: dict[str, Resources] = {}
        name = None
        for line in usage.splitlines():
            match = re.match(r"\s*Function (\S+):", line)
            if match:
                name = match.group(1)
                continue
            if name and "REG:" in line:
                fields = dict(re.findall(r"(\w+):(\d+)", line))
                found[name] = Resources(int(fields.get("REG", 0)), int(fields.get("SHARED", 0)),
                                        int(fields.get("LOCAL", 0)), int(fields.get("STACK", 0)))
                name = None
        elf = _run("cuobjdump", "-elf", path)
        for section in re.split(r"\n(?=\.nv\.info\.)", elf):
            head = section.split("\n", 1)[0]
            if not head.startswith(".nv.info.") or head[len(".nv.info."):] not in found:
                continue
            bounds = re.search(r"EIATTR_(?:REQNTID|MAX_THREADS)\s*\n\s*Format:\s*\S+\s*\n\s*Value:\s*([0-9a-fx ]+)",
                               section)
            if bounds:
                threads = 1
                for value in bounds.group(1).split():
                    threads *= int(value, 16)
                found[head[len(".nv.info."):]].threads = threads
        return found

    return _with_cubin_file(cubin, read)


# ----------------------------------------------------------------------------- tensor cores


def mma_flops_per_warp(instruction: Instruction) -> int:
    """Tensor-core FLOPs one warp's share of this instruction does (0 if not an MMA)."""
    parts = instruction.opcode.split(".")
    if parts[0] == "HGMMA":  # 64xNxK per warpgroup of 4 warps
        match = re.match(r"(\d+)x(\d+)x(\d+)", parts[1])
        if match:
            m, n, k = map(int, match.groups())
            return 2 * m * n * k // 4
    if parts[0] == "HMMA":  # per warp: 16816 = m16 n8 k16, 1688 = m16 n8 k8, 1684 = m16 n8 k4
        shape = parts[1]
        if shape.startswith("168"):
            return 2 * 16 * 8 * int(shape[3:])
        if shape.startswith("884"):
            return 2 * 8 * 8 * 4
    return 0


def is_mma(instruction: Instruction) -> bool:
    return mma_flops_per_warp(instruction) > 0


# ----------------------------------------------------------------------------- loops


@dataclass
class LoopPath:
    """One path through a loop body, head to back edge."""

    instructions: int
    counts: dict[str, int]  # base opcode -> count on this path
    mma: int
    mma_opcodes: dict[str, int]
    flops_per_warp: int

    @property
    def warp_instructions_per_mflop(self) -> float | None:
        return self.instructions / (self.flops_per_warp / 1e6) if self.flops_per_warp else None

    def count(self, opcodes: set[str]) -> int:
        return sum(self.counts.get(op, 0) for op in opcodes)

    @property
    def load_mode(self) -> str:
        """How tiles reach shared memory on this path."""
        if self.count(TMA_OPCODES):
            return "TMA"
        if self.count(CP_ASYNC_OPCODES):
            return "cp.async"
        if self.count(GLOBAL_LOADS) and self.count(SHARED_STORES):
            return "LDG+STS (synchronous)"
        if self.count(GLOBAL_LOADS):
            return "LDG to registers"
        return "none in loop"

    def summary(self) -> dict:
        return {
            "instructions": self.instructions,
            "tensor_core_instructions": self.mma,
            "tensor_core_opcodes": self.mma_opcodes,
            "tensor_core_flops_per_warp": self.flops_per_warp,
            "warp_instructions_per_mflop": (round(self.warp_instructions_per_mflop, 1)
                                            if self.warp_instructions_per_mflop else None),
            "load_mode": self.load_mode,
            "global_loads": self.count(GLOBAL_LOADS),
            "cp_async": self.count(CP_ASYNC_OPCODES),
            "tma": self.count(TMA_OPCODES),
            "shared_loads": self.count(SHARED_LOADS),
            "shared_stores": self.count(SHARED_STORES),
            "barriers": self.count(CTA_BARRIERS),
            "mbarrier_ops": self.count(MBARRIER_OPS),
            "spill_ops": self.count(SPILL_OPCODES),
        }


@dataclass
class Loop:
    head: int  # address of the first instruction
    back_edge: int  # address of the backward branch
    paths: list[LoopPath]
    truncated: bool = False  # more paths than were enumerated
    # When this loop sits inside another (a loop nest: its figures cover one inner iteration,
    # not a whole tile): the enclosing loop's instructions (static count, inner loops once)
    # and how many loops that enclosing loop holds. None when not nested.
    enclosing_instructions: int | None = None
    enclosing_loops: int | None = None

    @property
    def compute_paths(self) -> list[LoopPath]:
        """Distinct paths that use the tensor cores, cheapest first."""
        unique = {(p.instructions, p.mma): p for p in self.paths if p.mma}
        return sorted(unique.values(), key=lambda p: (p.instructions, p.mma))


def _divergence_only(ins: Instruction) -> bool:
    """BRA.DIV jumps to out-of-line code only when the warp has diverged (never in the uniform
    steady state this report measures); the code it reaches jumps back into the loop."""
    return ins.opcode.startswith("BRA.DIV")


def _reachable(code: Code) -> set[int]:
    """Addresses reachable from the entry without taking divergence-only branches."""
    at = {ins.address: i for i, ins in enumerate(code.instructions)}
    seen: set[int] = set()
    stack = [0] if code.instructions else []
    while stack:
        i = stack.pop()
        while i < len(code.instructions) and code.instructions[i].address not in seen:
            ins = code.instructions[i]
            seen.add(ins.address)
            target = ins.branch_target
            if target is not None and not _divergence_only(ins) and code.labels.get(target) in at:
                stack.append(at[code.labels[target]])
            unconditional = not ins.predicate and not _divergence_only(ins)
            if (target is not None or ins.base in ("EXIT", "RET")) and unconditional:
                break
            i += 1
    return seen


def _loops_by_head(code: Code) -> dict[int, list[int]]:
    """Loop head address -> addresses of the (reachable) backward branches to it."""
    reachable = _reachable(code)
    heads: dict[int, list[int]] = {}
    for ins in code.instructions:
        target = ins.branch_target
        if (target is not None and target in code.labels and code.labels[target] <= ins.address
                and ins.address in reachable and not _divergence_only(ins)):
            heads.setdefault(code.labels[target], []).append(ins.address)
    return heads


def innermost_loops(code: Code, max_paths: int = 256) -> list[Loop]:
    """Loops that contain no other loop, in address order, each with its paths."""
    heads = _loops_by_head(code)
    spans = {head: max(backs) for head, backs in heads.items()}
    innermost = [head for head, end in spans.items()
                 if not any(other != head and head <= other and spans[other] <= end for other in spans)]
    loops = []
    for head in sorted(innermost):
        loop = _loop_paths(code, head, heads[head], max_paths)
        enclosing = [(h, e) for h, e in spans.items() if h != head and h <= head and spans[head] <= e]
        if enclosing:
            outer_head, outer_end = min(enclosing, key=lambda span: span[1] - span[0])
            loop.enclosing_instructions = sum(1 for ins in code.instructions
                                              if outer_head <= ins.address <= outer_end and ins.base != "NOP")
            loop.enclosing_loops = sum(1 for h, e in spans.items() if outer_head <= h and e <= outer_end) - 1
        loops.append(loop)
    return loops


def _loop_paths(code: Code, head: int, back_edges: list[int], max_paths: int) -> Loop:
    """Every path head -> back edge through the (acyclic) body, as basic blocks."""
    end = max(back_edges)
    body = [ins for ins in code.instructions if head <= ins.address <= end]
    index = {ins.address: i for i, ins in enumerate(body)}
    backs = set(back_edges)

    def ends_block(ins: Instruction) -> bool:
        return ins.branch_target is not None or ins.base in ("EXIT", "RET", "BRX", "JMX")

    leaders = {0}
    for i, ins in enumerate(body):
        if ends_block(ins):
            leaders.add(i + 1)
            target = code.labels.get(ins.branch_target) if ins.branch_target else None
            if target in index:
                leaders.add(index[target])
    starts = sorted(x for x in leaders if x < len(body))
    blocks = [body[a:b] for a, b in zip(starts, starts[1:] + [len(body)])]
    block_of = {a: n for n, a in enumerate(starts)}

    def successors(n: int) -> list[int] | None:
        """Next blocks, or None where the iteration ends at a back edge."""
        last = blocks[n][-1]
        if last.address in backs and not last.predicate:
            return None
        conditional = bool(last.predicate) and last.predicate != "@PT"
        fallthrough = [n + 1] if n + 1 < len(blocks) else []
        if not ends_block(last) or _divergence_only(last):
            return fallthrough
        jump = []
        target = code.labels.get(last.branch_target) if last.branch_target else None
        if last.address in backs:
            return fallthrough  # a predicated back edge: taken ends the iteration (see below)
        if target in index and index[target] > index[last.address]:
            jump = [block_of[index[target]]]
        return (fallthrough if conditional else []) + jump

    paths: list[LoopPath] = []
    stack: list[tuple[int, tuple[int, ...]]] = [(0, ())]
    truncated = False
    while stack:
        n, trail = stack.pop()
        trail = trail + (n,)
        last = blocks[n][-1]
        if last.address in backs:
            paths.append(_path_of([ins for m in trail for ins in blocks[m]]))
            if len(paths) >= max_paths:
                truncated = bool(stack)
                break
        nexts = successors(n)
        for m in nexts or []:
            stack.append((m, trail))
    return Loop(head, end, paths, truncated)


def _path_of(instructions: list[Instruction]) -> LoopPath:
    counts: dict[str, int] = {}
    mma_opcodes: dict[str, int] = {}
    flops = 0
    issued = 0
    for ins in instructions:
        if ins.base == "NOP":
            continue
        issued += 1
        counts[ins.base] = counts.get(ins.base, 0) + 1
        f = mma_flops_per_warp(ins)
        if f:
            flops += f
            mma_opcodes[ins.opcode] = mma_opcodes.get(ins.opcode, 0) + 1
    return LoopPath(issued, counts, sum(mma_opcodes.values()), mma_opcodes, flops)


def spill_instructions(code: Code) -> int:
    return sum(1 for ins in code.instructions if ins.base in SPILL_OPCODES)


# ----------------------------------------------------------------------------- occupancy


def blocks_per_sm(arch: int, registers: int, threads: int | None, shared_bytes: int) -> dict:
    """Resident blocks per SM and what limits them (registers, shared memory, threads)."""
    limits = ARCH_LIMITS[90 if arch >= 90 else 80]
    if not threads:
        return {"blocks": None, "limited_by": "unknown block size"}
    warps = -(-threads // 32)
    per_warp = -(-max(registers, 1) * 32 // REGISTER_UNIT) * REGISTER_UNIT
    by = {
        "registers": limits["registers"] // (per_warp * warps),
        "threads": limits["threads"] // threads,
        "blocks": limits["blocks"],
    }
    if shared_bytes:
        if shared_bytes > limits["max_shared_per_block"]:
            return {"blocks": 0, "limited_by": "shared memory exceeds the per-block maximum"}
        by["shared memory"] = limits["shared"] // (shared_bytes + RESERVED_SHARED_PER_BLOCK)
    blocks = min(by.values())
    return {"blocks": blocks, "limited_by": min(by, key=by.get), "warps_per_sm": blocks * warps}
