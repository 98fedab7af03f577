"""Collectives in a compiled program, counted by kind from its HLO text.

It claims only what the HLO shows. An op inside a loop body (the scan over layers) is
one op in the text but runs once per iteration: it is counted under `in_loops`, and its
runs per step are given only when the loop's trip count can be read off the HLO (a
`counter < constant` condition, a counter that starts at a constant and grows by one). The TPU
compiler chooses how to express communication (a reduce-scatter may appear as an
all-reduce plus a slice, or as a loop of collective-permutes), so a kind says how the
program communicates, not what the model asked for. Bytes are each op's result size
(for async `-start` ops, the largest buffer of the tuple).
"""

from __future__ import annotations

import dataclasses
import math
import re

KINDS = {
    "all-gather": "all-gather", "all-gather-start": "all-gather",
    "all-reduce": "all-reduce", "all-reduce-start": "all-reduce",
    "reduce-scatter": "reduce-scatter",
    "collective-permute": "collective-permute", "collective-permute-start": "collective-permute",
    "all-to-all": "all-to-all", "ragged-all-to-all": "all-to-all",
    "collective-broadcast": "collective-broadcast",
    "send": "send", "recv": "recv",
}
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s4": 1, "u4": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
               "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16}

_HEADER = re.compile(r"^(ENTRY )?%([\w.\-]+) ")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%([\w.\-]+) = (.*)$")
_CALLED = re.compile(r"\b(calls|to_apply|body|condition|branch_computations|true_computation|false_computation)="
                     r"(\{[^}]*\}|%[\w.\-]+)")
_ARRAY = re.compile(r"\b([a-z]+[0-9]*)\[([0-9,]*)\]")


@dataclasses.dataclass
class Instruction:
    name: str
    type_text: str
    opcode: str
    rest: str


@dataclasses.dataclass
class KindCount:
    ops: int = 0                       # in the HLO text
    in_loops: int = 0                  # of those, inside a loop body
    runs_per_step: int | None = 0      # None: some loop's trip count is not readable
    bytes_per_step: int | None = 0


def _split_type(text: str) -> tuple[str, str]:
    """(result type, remainder starting at the opcode) of an instruction's right side."""
    if text.startswith("("):
        depth = 0
        for i, ch in enumerate(text):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                return text[:i + 1], text[i + 1:].lstrip()
    head, _, tail = text.partition(" ")
    return head, tail


def parse_computations(hlo: str) -> tuple[dict[str, list[Instruction]], str]:
    """Computation name -> its instructions, and the entry computation's name."""
    computations: dict[str, list[Instruction]] = {}
    entry, current = "", None
    for line in hlo.splitlines():
        if current is None:
            match = _HEADER.match(line)
            if match and line.rstrip().endswith("{"):
                current = match.group(2)
                computations[current] = []
                entry = current if match.group(1) else entry
            continue
        if line.startswith("}"):
            current = None
            continue
        match = _INSTRUCTION.match(line)
        if match:
            type_text, remainder = _split_type(match.group(2))
            opcode = remainder.partition("(")[0]
            computations[current].append(Instruction(match.group(1), type_text, opcode, remainder))
    return computations, entry


def _array_bytes(type_text: str) -> list[int]:
    return [math.prod(int(d) for d in dims.split(",") if d) * DTYPE_BYTES.get(dtype, 0)
            for dtype, dims in _ARRAY.findall(type_text)]


def result_bytes(instruction: Instruction) -> int:
    sizes = _array_bytes(instruction.type_text)
    if not sizes:
        return 0
    return max(sizes) if instruction.opcode.endswith("-start") else sum(sizes)


def _constant(name: str, by_name: dict[str, Instruction]) -> int | None:
    """The integer a scalar instruction holds, following copies; None if not constant."""
    for _ in range(8):
        instruction = by_name.get(name)
        if instruction is None:
            return None
        if instruction.opcode == "constant":
            value = re.match(r"constant\((-?\d+)\)", instruction.rest)
            return int(value.group(1)) if value else None
        operand = re.match(r"(?:copy|bitcast)\(%([\w.\-]+)\)", instruction.rest)
        if operand is None:
            return None
        name = operand.group(1)
    return None


def _operands(instruction: Instruction) -> list[str]:
    return re.findall(r"%([\w.\-]+)", instruction.rest.partition(")")[0])


def _trip_count(loop: Instruction, computations: dict[str, list[Instruction]],
                by_name: dict[str, Instruction]) -> int | None:
    """Iterations of a `while` whose condition is `counter < limit` and whose body adds a
    constant to the counter, the counter starting at a constant (lax.scan's loops, and
    the compiler's windowed-matmul loops); None when the HLO does not say all of that."""
    condition = re.search(r"condition=%([\w.\-]+)", loop.rest)
    body = re.search(r"body=%([\w.\-]+)", loop.rest)
    operands = _operands(loop)
    if not (condition and body and operands) or not computations.get(condition.group(1)):
        return None
    root = computations[condition.group(1)][-1]
    compared = _operands(root)
    if root.opcode != "compare" or "direction=LT" not in root.rest or len(compared) != 2:
        return None
    counter, limit = by_name.get(compared[0]), _constant(compared[1], by_name)
    index = re.search(r"index=(\d+)", counter.rest) if counter and counter.opcode == "get-tuple-element" else None
    init = by_name.get(operands[0])
    if index is None or limit is None or init is None or init.opcode != "tuple":
        return None
    k = int(index.group(1))
    starts = _operands(init)
    start = _constant(starts[k], by_name) if k < len(starts) else None
    increment = _increment(computations.get(body.group(1), []), k, by_name)
    if start is None or not increment:
        return None
    return max(0, -(-(limit - start) // increment))


def _increment(body: list[Instruction], k: int, by_name: dict[str, Instruction]) -> int | None:
    """c when the body's result k is `add(its parameter's element k, constant c)`."""
    if not body or body[-1].opcode != "tuple":
        return None
    results = _operands(body[-1])
    step = by_name.get(results[k]) if k < len(results) else None
    if step is None or step.opcode != "add":
        return None
    for operand, other in (_operands(step), reversed(_operands(step))):
        source = _through_copies(operand, by_name)
        if source is not None and source.opcode == "get-tuple-element" and f"index={k}" in source.rest:
            return _constant(other, by_name)
    return None


def _through_copies(name: str, by_name: dict[str, Instruction]) -> Instruction | None:
    instruction = by_name.get(name)
    for _ in range(8):
        if instruction is None or instruction.opcode not in ("copy", "bitcast"):
            return instruction
        instruction = by_name.get(_operands(instruction)[0])
    return None


def _runs_per_computation(computations: dict[str, list[Instruction]], entry: str,
                          ) -> tuple[dict[str, int | None], set[str]]:
    """How often each computation runs per step (None: unknown) and which sit in loops."""
    by_name = {i.name: i for instructions in computations.values() for i in instructions}
    runs: dict[str, int | None] = {}
    in_loops: set[str] = set()

    def visit(name: str, times: int | None, in_loop: bool, path: tuple[str, ...]) -> None:
        if name not in computations or name in path:
            return
        previous = runs.get(name, 0)
        runs[name] = None if previous is None or times is None else previous + times
        if in_loop:
            in_loops.add(name)
        for instruction in computations[name]:
            for attribute, target in _CALLED.findall(instruction.rest):
                if attribute == "to_apply" and instruction.opcode in KINDS:
                    continue  # a collective's reduction function
                loop = instruction.opcode == "while" and attribute in ("body", "condition")
                inner = times
                if loop:
                    trips = _trip_count(instruction, computations, by_name)
                    inner = None if times is None or trips is None else times * trips
                for callee in re.findall(r"%([\w.\-]+)", target):
                    visit(callee, inner, in_loop or loop, path + (name,))

    visit(entry, 1, False, ())
    return runs, in_loops


def collective_census(hlo: str) -> dict[str, KindCount]:
    """Collectives by kind: ops in the text, how many sit in loops, runs and bytes per step."""
    computations, entry = parse_computations(hlo)
    runs, in_loops = _runs_per_computation(computations, entry)
    census: dict[str, KindCount] = {}
    for name, instructions in computations.items():
        for instruction in instructions:
            kind = KINDS.get(instruction.opcode)
            if kind is None:
                continue
            count = census.setdefault(kind, KindCount())
            count.ops += 1
            count.in_loops += name in in_loops
            times = runs.get(name, 0)
            if times is None or count.runs_per_step is None:
                count.runs_per_step = count.bytes_per_step = None
            else:
                count.runs_per_step += times
                count.bytes_per_step += times * result_bytes(instruction)
    return dict(sorted(census.items()))
