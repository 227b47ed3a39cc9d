"""The built-in reasoning-over-time tasks (spec §6c, §6d), registered by name in `bdh.tasks.TASKS`.

Every task is exact and seeded only by the `random.Random` it is given. Its vocabulary depends on its constructor
knobs, never on the size, so one trained model can be evaluated at 1x, 2x, 4x and 8x its training size; sequence
lengths grow with the size. Every example starts with the start token `<bos>` (id 1 of every built-in vocabulary,
`BOS_ID`; id 0 is padding). Two answer forms: teacher-forced (next-token form, `Example.next_token`: the answer
tokens are targets and are also fed back as inputs, as a language model generates them) and blank (answers at
positions marked by `_`, never fed back: the model must count where it is, a different task).

    name           size knob (train)  format (inputs; `_` marks a blank answer position)
    parity         length (16)        <bos> 0 1 1 0 1 ...      target at every bit: running XOR
    mqar           pairs (8)          <bos> k3 v7 k9 v1 ... ? k9 k3  target at each query key: its value
    copy           length (8)         <bos> c a h b | c a h b <eos>  teacher-forced: answers c a h b <eos>
    reverse        length (8)         <bos> c a h b | b h a c <eos>  teacher-forced: answers b h a c <eos>
    copy-blank     length (8)         <bos> c a h b | _ _ _ _  targets at the blanks: c a h b
    reverse-blank  length (8)         <bos> c a h b | _ _ _ _  targets at the blanks: b h a c
    vartrack       hops (4)           <bos> x7 = 5 ; x2 = x7 ; ... ? x2 _     target at `_`: 5
    eca            steps (4)          <bos> row0 | row1 | ... | rowS  next-token; answers: every cell of rows 1..S
    addition       digits (4)         <bos> a0 a1 .. + b0 b1 .. = _ _ .. _   targets: the sum, least significant first
    sudoku4        blanks (8)         <bos> 16 cells (0 = blank) then 16 `_`  targets: the unique solution
    sudoku9        blanks (40)        <bos> 81 cells (0 = blank) then 81 `_`  targets: the unique solution (GPU preset)

and, from the same line of work (`bdh.tasks.standard`): `selective-copy`, `induction`, `dyck`, `passkey`, `s5`.
"""

from __future__ import annotations

import random
import string
from typing import ClassVar

from .base import BOS, BOS_ID, Example, Task, TaskError, register_task

BLANK = "_"
EOS = "<eos>"
DIGITS = tuple("0123456789")


def _int_knob(task: str, name: str, value, lo: int, hi: int | None = None) -> int:
    """`value` if an integer in [lo, hi], else TaskError naming the knob."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise TaskError(f"task {task!r}: {name}={value!r}: expected an integer {rng}")
    return value


# ============================================================================ parity
@register_task
class Parity(Task):
    """Streaming parity: a bit stream; the target at every bit is the XOR of the bits so far.

    Format (length 6):   inputs  <bos> 1 0 1 1 0 0
                         targets       1 1 0 1 1 1    (every bit is an answer; the start token is not)
    Source: the streaming parity task ("Algorithm development in neural networks: insights from the streaming
    parity task"), as there. Knobs: none. Size: `length` (train 16). Exact match: the running parity at every bit.
    """

    name = "parity"
    vocab = ("<pad>", BOS, "0", "1")
    size_name, train_size = "length", 16

    def example(self, rng: random.Random, size: int) -> Example:
        bits = [rng.getrandbits(1) for _ in range(size)]
        out, p = [0], 0
        for b in bits:
            p ^= b
            out.append(2 + p)
        return Example([BOS_ID] + [2 + b for b in bits], out, [False] + [True] * size)


# ============================================================================ MQAR
@register_task
class MQAR(Task):
    """Multi-query associative recall (Zoology, Arora et al. 2023): key-value pairs, then every key queried once.

    Format (pairs 3, distance 2):
        inputs  <bos> k5 v1 k0 v7 k9 v2 . . ? k0 k9 k5
        targets                               v7 v2 v1     (answers at the query keys only, never fed back)
    Source: Zoology's generator (`zoology/data/multiquery_ar.py`). As there: keys and values come from disjoint
    halves of the vocabulary (here tokens `k*` and `v*`), keys are distinct and so are values (both drawn without
    replacement), every pair is queried once, the answer is the value predicted at the query key's position and is
    not an input. Where ours differs: the queries follow the pairs contiguously in a random order after a `?` token
    (Zoology scatters them at power-law distributed gaps over a fixed-length sequence whose other positions are
    random tokens), `distance` filler tokens `.` may sit between the pairs and the queries, and the sequence starts
    with `<bos>`.
    Knobs: `n_keys` (64), `n_values` (64), `distance` (0). Size: `pairs` (train 8, max min(n_keys, n_values)).
    Exact match: every query gets its value.
    """

    name = "mqar"
    size_name, train_size = "pairs", 8

    def __init__(self, n_keys: int = 64, n_values: int = 64, distance: int = 0):
        self.n_keys = _int_knob(self.name, "n_keys", n_keys, 1)
        self.n_values = _int_knob(self.name, "n_values", n_values, 1)
        self.distance = _int_knob(self.name, "distance", distance, 0)
        self.max_size = min(self.n_keys, self.n_values)
        self.vocab = ("<pad>", BOS, ".", "?", *(f"k{i}" for i in range(n_keys)), *(f"v{i}" for i in range(n_values)))

    def example(self, rng: random.Random, size: int) -> Example:
        k0, v0 = 4, 4 + self.n_keys
        keys = rng.sample(range(self.n_keys), size)
        vals = rng.sample(range(self.n_values), size)
        order = rng.sample(range(size), size)
        inputs = [BOS_ID]
        for k, v in zip(keys, vals):
            inputs += (k0 + k, v0 + v)
        inputs += [2] * self.distance + [3]
        n_ctx = len(inputs)
        inputs += [k0 + keys[i] for i in order]
        targets = [0] * n_ctx + [v0 + vals[i] for i in order]
        return Example(inputs, targets, [False] * n_ctx + [True] * size)


# ============================================================================ copy / reverse
class _Copy(Task):
    size_name, train_size = "length", 8
    reverse = False
    blank = False  # True: answers at blanks `_` that are never fed back (index counting)

    def __init__(self, alphabet: int = 8):
        self.alphabet = _int_knob(self.name, "alphabet", alphabet, 2, 26)
        self.vocab = ("<pad>", BOS, "|", BLANK if self.blank else EOS, *string.ascii_lowercase[:alphabet])

    def example(self, rng: random.Random, size: int) -> Example:
        s = [4 + rng.randrange(self.alphabet) for _ in range(size)]
        out = s[::-1] if self.reverse else s
        if self.blank:
            return Example([BOS_ID] + s + [2] + [3] * size, [0] * (size + 2) + out,
                           [False] * (size + 2) + [True] * size)
        seq = [BOS_ID] + s + [2] + out + [3]  # <bos> s | out <eos>
        return Example.next_token(seq, [False] * (size + 2) + [True] * (size + 1))


@register_task
class Copy(_Copy):
    """Copy, teacher-forced: `<bos> s | s <eos>` in next-token form; the answers (the copy and `<eos>`) are
    targets and are fed back as inputs.

    Format (length 4):   sequence  <bos> c a h b | c a h b <eos>
                         inputs    <bos> c a h b | c a h b
                         targets               c a h b <eos>   (at the inputs `|` c a h b)
    Source: the copy task of "Repeat After Me" (Jelassi et al. 2024: `<BOS> x <COPY> x <EOS>`, uniform letters)
    and of the linear-attention literature. Where ours differs: the delimiter is `|`, the alphabet defaults to 8
    letters (theirs: 26), and the length is fixed per example (the trainer draws it uniformly per batch).
    Knobs: `alphabet` (8 letters a..h, at most 26). Size: `length` (train 8). Exact match: the copy and `<eos>`.
    The blank form is `copy-blank`.
    """

    name = "copy"


@register_task
class Reverse(_Copy):
    """Reverse, teacher-forced: `<bos> s | reversed(s) <eos>` in next-token form; the answers (the reversal and
    `<eos>`) are targets and are fed back as inputs.

    Format (length 4):   sequence  <bos> c a h b | b h a c <eos>
                         targets               b h a c <eos>   (at the inputs `|` b h a c)
    Source: the reversal variant of the copy task (Neural Turing Machines, Graves et al. 2014; "Repeat After Me"'s
    format). Where ours differs: as `copy` (delimiter `|`, 8 letters by default, a fixed length per example).
    Knobs: `alphabet` (8, at most 26). Size: `length` (train 8). Exact match: the reversal and `<eos>`.
    The blank form is `reverse-blank`.
    """

    name = "reverse"
    reverse = True


@register_task
class CopyBlank(_Copy):
    """Copy at blanks: a string, `|`, then one blank `_` per character; the blanks' targets are the string. The
    answers are never fed back, so the model must count its position in the output (index counting), unlike the
    literature's teacher-forced copy (`copy`).

    Format (length 4):   inputs  <bos> c a h b | _ _ _ _
                         targets                 c a h b
    Source: this project's earlier `copy` (kept, named for what it is). Knobs: `alphabet` (8, at most 26).
    Size: `length` (train 8). Exact match: the whole string.
    """

    name = "copy-blank"
    blank = True


@register_task
class ReverseBlank(_Copy):
    """Reverse at blanks: a string, `|`, then one blank `_` per character; the targets are the string reversed (the
    answers are never fed back).

    Format (length 4):   inputs  <bos> c a h b | _ _ _ _
                         targets                 b h a c
    Source: this project's earlier `reverse`. Knobs: `alphabet` (8, at most 26). Size: `length` (train 8).
    Exact match: the whole reversal.
    """

    name = "reverse-blank"
    reverse = blank = True


# ============================================================================ variable tracking
@register_task
class VarTrack(Task):
    """Multi-hop variable tracking with interleaved distractor chains, then a query.

    Format (hops 2, distractors 1), `name = value ;` statements, 4 tokens each:
        <bos> x7 = 5 ; x40 = 2 ; x2 = x7 ; x11 = x40 ; x9 = x2 ; x3 = x11 ; ? x9 _
        target at `_`: 5      (x9 = x2 = x7 = 5)
    There are `distractors + 1` chains, each a digit assignment followed by `hops` copies (`b = a`), with all names
    distinct; the chains are interleaved at random (each chain keeps its order) and the end of one of them, chosen
    at random, is queried. Names are single tokens from a fixed set `x0 .. x{n_names-1}`.
    Knobs: `distractors` (2 chains), `n_names` (128). Size: `hops` (train 4; max n_names // (distractors + 1) - 1,
    41 at the defaults, so 8x = 32 fits). Exact match: the value digit at the answer position.
    """

    name = "vartrack"
    size_name, train_size = "hops", 4

    def __init__(self, distractors: int = 2, n_names: int = 128):
        self.distractors = _int_knob(self.name, "distractors", distractors, 0)
        self.n_names = _int_knob(self.name, "n_names", n_names, 2 * (distractors + 1))
        self.max_size = n_names // (distractors + 1) - 1
        # 0 pad, 1 <bos>, 2..11 digits, 12 '=', 13 ';', 14 '?', 15 '_', 16.. names
        self.vocab = ("<pad>", BOS, *DIGITS, "=", ";", "?", BLANK, *(f"x{i}" for i in range(n_names)))

    def example(self, rng: random.Random, size: int) -> Example:
        k = self.distractors + 1
        names = [16 + i for i in rng.sample(range(self.n_names), k * (size + 1))]
        chains = [names[c * (size + 1):(c + 1) * (size + 1)] for c in range(k)]
        values = [2 + rng.randrange(10) for _ in range(k)]
        # a uniformly random interleaving of k chains of equal length, each kept in order
        slots = [c for c in range(k) for _ in range(size + 1)]
        rng.shuffle(slots)
        pos = [0] * k
        inputs = [BOS_ID]
        for c in slots:
            i = pos[c]
            pos[c] = i + 1
            inputs += (chains[c][i], 12, values[c] if i == 0 else chains[c][i - 1], 13)
        q = rng.randrange(k)
        inputs += (14, chains[q][-1], 15)
        n = len(inputs)
        return Example(inputs, [0] * (n - 1) + [values[q]], [False] * (n - 1) + [True])


# ============================================================================ cellular automaton
def eca_step(row: list[int], rule: int) -> list[int]:
    """One step of the elementary cellular automaton `rule` (Wolfram numbering) on a ring of cells 0/1."""
    n = len(row)
    return [(rule >> (4 * row[i - 1] + 2 * row[i] + row[(i + 1) % n])) & 1 for i in range(n)]


@register_task
class ECA(Task):
    """Elementary cellular automaton rollout on a ring, in next-token form.

    Format (width 4, steps 2): the sequence  <bos> 1 0 0 1 | 0 1 1 1 | 0 1 0 0  (rule 30 from a random row 0);
    the model reads it shifted (`Example.next_token`) and the answers are every cell of rows 1..steps (the row
    separators `|` and row 0 are not scored). Teacher-forced: each predicted row is fed back as the next input.
    Cell i of the next row is rule bit (4 left + 2 centre + right).
    Knobs: `rule` (30; Wolfram number 0..255, e.g. 110), `width` (12). Size: `steps` (train 4).
    Exact match: every cell of every predicted row.
    """

    name = "eca"
    vocab = ("<pad>", BOS, "0", "1", "|")
    size_name, train_size = "steps", 4

    def __init__(self, rule: int = 30, width: int = 12):
        self.rule = _int_knob(self.name, "rule", rule, 0, 255)
        self.width = _int_knob(self.name, "width", width, 3)

    def example(self, rng: random.Random, size: int) -> Example:
        row = [rng.getrandbits(1) for _ in range(self.width)]
        seq = [BOS_ID] + [2 + c for c in row]
        answer = [False] * (1 + self.width)
        for _ in range(size):
            row = eca_step(row, self.rule)
            seq.append(4)
            seq += [2 + c for c in row]
            answer.append(False)
            answer += [True] * self.width
        return Example.next_token(seq, answer)


# ============================================================================ addition
@register_task
class Addition(Task):
    """Multi-digit addition with carries, digits least significant first.

    Format (digits 3, 472 + 385 = 857):
        inputs  <bos> 2 7 4 + 5 8 3 = _ _ _ _
        targets                       7 5 8 0     (digits+1 sum digits, least significant first, at blanks)
    Operands are uniform over all `digits`-digit strings (leading zeros allowed).
    Knobs: none. Size: `digits` (train 4). Exact match: every digit of the sum, the final carry included.
    """

    name = "addition"
    vocab = ("<pad>", BOS, *DIGITS, "+", "=", BLANK)  # digit d is id 2 + d
    size_name, train_size = "digits", 4

    def example(self, rng: random.Random, size: int) -> Example:
        a = [rng.randrange(10) for _ in range(size)]
        b = [rng.randrange(10) for _ in range(size)]
        s, carry = [], 0
        for x, y in zip(a, b):
            carry, d = divmod(x + y + carry, 10)
            s.append(d)
        s.append(carry)
        n_in = 2 * size + 3
        inputs = [BOS_ID] + [2 + x for x in a] + [12] + [2 + y for y in b] + [13] + [14] * (size + 1)
        return Example(inputs, [0] * n_in + [2 + d for d in s], [False] * n_in + [True] * (size + 1))


# ============================================================================ sudoku
_POPCOUNT: dict[int, list[int]] = {}  # n -> the popcount of every n-bit candidate mask


def _search(grid: list[int], box: int, limit: int, rng: random.Random | None = None, collect: bool = False):
    """Exact backtracking over `grid` (row-major, 0 = blank, digits 1..n) with candidate bitmasks, branching on the
    blank with the fewest candidates (in a random order when `rng` is given). Returns (number of completions counted
    up to `limit`, the first completion or None); with `collect`, (count, every completion found)."""
    n = box * box
    full = (1 << n) - 1
    rows, cols, boxes = [0] * n, [0] * n, [0] * n
    blanks = []
    for i, v in enumerate(grid):
        r, c = divmod(i, n)
        b = (r // box) * box + c // box
        if v:
            bit = 1 << (v - 1)
            if (rows[r] | cols[c] | boxes[b]) & bit:
                return 0, ([] if collect else None)  # the givens already clash
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
        else:
            blanks.append((i, r, c, b))
    work = list(grid)
    found: list[list[int]] = []
    popcount = _POPCOUNT.get(n)
    if popcount is None:
        popcount = _POPCOUNT[n] = [bin(m).count("1") for m in range(full + 1)]

    def solve(blanks: list) -> int:
        if not blanks:
            if collect or not found:
                found.append(list(work))
            return 1
        best, best_cand, best_k = -1, 0, n + 1
        for j, (_, r, c, b) in enumerate(blanks):
            cand = full & ~(rows[r] | cols[c] | boxes[b])
            k = popcount[cand]
            if k < best_k:
                best, best_cand, best_k = j, cand, k
                if k <= 1:
                    break
        if best_k == 0:
            return 0
        i, r, c, b = blanks[best]
        rest = blanks[:best] + blanks[best + 1:]
        bits = [1 << d for d in range(n) if best_cand >> d & 1]
        if rng is not None and len(bits) > 1:
            rng.shuffle(bits)
        total = 0
        for bit in bits:
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
            work[i] = bit.bit_length()
            total += solve(rest)
            rows[r] ^= bit
            cols[c] ^= bit
            boxes[b] ^= bit
            if total >= limit:
                break
        work[i] = 0
        return total

    total = solve(blanks)
    if collect:
        return total, found
    return total, (found[0] if found else None)


def count_solutions(grid: list[int], box: int, limit: int = 2) -> int:
    """Number of completions of an n x n Sudoku `grid` (n = box^2; row-major, 0 = blank, digits 1..n), counted
    exactly up to `limit` (2 answers "is the solution unique")."""
    return _search(grid, box, limit)[0]


def random_solved_grid(rng: random.Random, box: int) -> list[int]:
    """A random solved n x n grid (n = box^2, row-major, digits 1..n).

    The base pattern (box*(r%box) + r//box + c) % n + 1 under digit, row-in-band, band, column-in-stack, stack
    permutations and transposition reaches only some grids (192 of the 288 4x4 grids; at 9x9 every band keeps the
    pattern's repeated digit triples, a shortcut a model could learn). So the grid is first filled by randomized
    exact backtracking (every grid reachable: the diagonal boxes, which constrain each other in nothing, are
    filled at random first, then the rest is searched with candidates in a random order) and then put through
    those random validity-preserving permutations."""
    n = box * box
    grid = None
    while grid is None:  # (a 4x4 diagonal can leave no completion: draw it again)
        grid = [0] * (n * n)
        for k in range(box):
            for j, d in enumerate(rng.sample(range(1, n + 1), n)):
                a, b = divmod(j, box)
                grid[(k * box + a) * n + k * box + b] = d
        _, grid = _search(grid, box, 1, rng)

    def shuffled_lines() -> list[int]:
        groups = rng.sample(range(box), box)
        return [g * box + k for g in groups for k in rng.sample(range(box), box)]

    digits = rng.sample(range(1, n + 1), n)
    rs, cs = shuffled_lines(), shuffled_lines()
    if rng.getrandbits(1):
        rs, cs = cs, rs
        grid = [grid[c * n + r] for r in range(n) for c in range(n)]
    return [digits[grid[r * n + c] - 1] for r in rs for c in cs]


class _Sudoku(Task):
    box = 2
    size_name = "blanks"
    direct = 8  # up to this many blanks: rejection sampling; beyond it, greedy removal on top
    max_tries = 1000

    def __init__(self):
        n = self.box * self.box
        self.n = n
        self.vocab = ("<pad>", BOS, *(str(d) for d in range(n + 1)), BLANK)  # cell value v is id 2 + v (0 = blank)

    def puzzle(self, rng: random.Random, size: int) -> tuple[list[int], list[int]]:
        """(puzzle, solution): a puzzle with `size` blanks (0) whose only completion is `solution`."""
        cells = self.n * self.n
        first = min(size, self.direct)
        for _ in range(self.max_tries):
            solution = random_solved_grid(rng, self.box)
            order = rng.sample(range(cells), cells)
            puzzle = list(solution)
            for i in order[:first]:
                puzzle[i] = 0
            if count_solutions(puzzle, self.box) != 1:
                continue
            blanks = first
            for i in order[first:]:
                if blanks == size:
                    break
                puzzle[i] = 0
                if count_solutions(puzzle, self.box) == 1:
                    blanks += 1
                else:
                    puzzle[i] = solution[i]
            if blanks == size:
                return puzzle, solution
        raise TaskError(f"task {self.name!r}: {self.size_name}={size}: no puzzle with a unique solution found in "
                        f"{self.max_tries} tries: expected fewer blanks")

    def example(self, rng: random.Random, size: int) -> Example:
        cells = self.n * self.n
        puzzle, solution = self.puzzle(rng, size)
        inputs = [BOS_ID] + [2 + v for v in puzzle] + [self.n + 3] * cells
        targets = [0] * (cells + 1) + [2 + v for v in solution]
        return Example(inputs, targets, [False] * (cells + 1) + [v == 0 for v in puzzle])


@register_task
class Sudoku4(_Sudoku):
    """4x4 Sudoku (2x2 boxes) with a unique solution: `<bos>`, 16 cells row-major (0 = blank), then 16 blanks `_`
    whose targets are the solution.

    Format (blanks 8):   inputs  <bos> 1 0 3 0 0 4 0 2 2 0 0 3 4 0 2 0  _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _
                         targets                                        1 2 3 4 3 4 1 2 2 1 4 3 4 3 2 1
    Only the outputs of the blank cells are scored (the givens' outputs hold the solution too but are masked
    out: copying them is not the task). One of the 288 solved grids (all enumerated once by the exact solver) is
    drawn uniformly, `blanks` cells are blanked uniformly at random, and both are redrawn until exactly one grid
    agrees with the givens (the puzzle is uniform over unique puzzles with that many blanks).
    Knobs: none. Size: `blanks` (train 8, max 12: a 4x4 puzzle needs >= 4 givens). Exact match: every blank right.
    """

    name = "sudoku4"
    box = 2
    train_size, max_size = 8, 12
    max_tries = 100_000
    _grids: ClassVar[list[list[int]] | None] = None  # all 288 solved grids (enumerated once by the solver)
    _has: ClassVar[list[list[int]]] = []  # _has[cell][v]: bitset of the grids holding digit v at cell

    @classmethod
    def _tables(cls) -> list[list[int]]:
        if cls._grids is None:
            grids = _search([0] * 16, 2, 10**6, collect=True)[1]
            cls._has = [[sum(1 << g for g, grid in enumerate(grids) if grid[i] == v) for v in range(5)]
                        for i in range(16)]
            cls._grids = grids
        return cls._grids

    def puzzle(self, rng: random.Random, size: int) -> tuple[list[int], list[int]]:
        """Rejection sampling, exactly uniform over (grid, blank cells) with a unique solution: a uniform grid of
        the 288, `size` uniform blank cells, redrawn until no other grid agrees with the givens (a lookup in the
        table of all grids, equal to the solver's count)."""
        grids, has = self._tables(), self._has
        for _ in range(self.max_tries):
            solution = grids[rng.randrange(len(grids))]
            holes = set(rng.sample(range(16), size))
            match = -1
            for i in range(16):
                if i not in holes:
                    match &= has[i][solution[i]]
            if match & (match - 1) == 0:  # one grid left: the solution
                return [0 if i in holes else v for i, v in enumerate(solution)], list(solution)
        raise TaskError(f"task {self.name!r}: {self.size_name}={size}: no puzzle with a unique solution found in "
                        f"{self.max_tries} tries: expected fewer blanks")


@register_task
class Sudoku9(_Sudoku):
    """9x9 Sudoku (3x3 boxes) with a unique solution, the GPU preset's task: 81 cells row-major (0 = blank), then
    81 blanks `_` whose targets are the solution; only the blank cells' outputs are scored.

    Format: as `sudoku4`, with 1 + 81 + 81 tokens and digits 1..9. Up to 40 blanks the blanks are drawn uniformly and
    redrawn until the solution is unique; beyond 40, that unique 40-blank puzzle loses further cells in a random
    order, each kept only when the solution stays unique (restarting if the cells run out).
    Knobs: none. Size: `blanks` (train 40, max 55: about 2 ms per example at 40, 25 ms at 55; 58 already takes
    ~200 ms and 64 is the known limit of 17 givens). Exact match: every blank cell right.
    """

    name = "sudoku9"
    box = 3
    train_size, max_size = 40, 55
    direct = 40
