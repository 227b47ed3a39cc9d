"""bdh.tasks: the built-in reasoning tasks (exact answers, recomputed here independently), sizes 1x..8x, bad
sizes, user tasks by file path and by module, and malformed user tasks (< 20 s)."""

from __future__ import annotations

import itertools
import random
import sys
import textwrap

import pytest
import torch

from bdh.tasks import (MAX_BATCH_TOKENS, MAX_EXAMPLE_TOKENS, MAX_SIZE, MAX_VOCAB, TASKS, Example, Task, TaskError,
                       check_task, exact_match, load_task, masked_loss)
from bdh.tasks.builtin import count_solutions, eca_step, random_solved_grid

BUILTINS = ["parity", "mqar", "copy", "reverse", "copy-blank", "reverse-blank", "vartrack", "eca", "addition", "sudoku4",
            "sudoku9", "selective-copy", "induction", "dyck", "passkey", "s5"]


def sizes_of(task: Task) -> list[int]:
    """1x, 2x, 4x, 8x the train size, clipped to the task's max_size (Sudoku: blanks are bounded by the grid)."""
    hi = task.max_size if task.max_size is not None else 10**9
    return sorted({min(m * task.train_size, hi) for m in (1, 2, 4, 8)})


def examples(task: Task, size: int, n: int, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    return [task.checked_example(rng, size) for _ in range(n)]


def answers(task: Task, ex: Example) -> list[str]:
    return [task.vocab[t] for t, m in zip(ex.targets, ex.mask) if m]


def body(task: Task, ex: Example) -> list[str]:
    """The input tokens after the start token (which every built-in example begins with)."""
    toks = task.decode(ex.inputs)
    assert toks[0] == "<bos>" and "<bos>" not in toks[1:] and not ex.mask[0]
    return toks[1:]


# ----------------------------------------------------------------------------- every built-in
def test_builtins_registered():
    load_task("parity")
    assert set(BUILTINS) <= set(TASKS)


@pytest.mark.parametrize("name", BUILTINS)
def test_deterministic_and_seeded(name):
    task = load_task(name)
    a = task.batch(random.Random(3), task.train_size, 8)
    b = task.batch(random.Random(3), task.train_size, 8)
    c = task.batch(random.Random(4), task.train_size, 8)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    assert not all(u.shape == v.shape and torch.equal(u, v) for u, v in zip(a, c))
    # the global RNGs play no part
    random.seed(0)
    d = task.batch(random.Random(3), task.train_size, 8)
    assert all(torch.equal(u, v) for u, v in zip(a, d))


@pytest.mark.parametrize("name", BUILTINS)
def test_sizes_1x_to_8x_share_the_vocabulary(name):
    task = load_task(name)
    vocab = tuple(task.vocab)
    assert vocab[0] == "<pad>" and len(set(vocab)) == len(vocab)
    lengths = []
    for size in sizes_of(task):
        x, y, m = task.batch(random.Random(size), size, 3)
        assert tuple(load_task(name).vocab) == vocab  # the vocabulary is the task's, not the size's
        assert x.max() < len(vocab) and y.max() < len(vocab) and x.min() >= 0
        assert m.any(1).all() and (y[m] != 0).all()
        lengths.append(x.shape[1])
    if not name.startswith("sudoku"):  # a Sudoku's length is the grid's; everything else grows with the size
        assert lengths == sorted(lengths) and lengths[-1] > lengths[0]
    if task.max_size is not None:
        assert task.max_size >= (8 * task.train_size if not name.startswith("sudoku") else task.train_size)


@pytest.mark.parametrize("name", BUILTINS)
def test_bad_sizes(name):
    task = load_task(name)
    bad = [0, -1, 2.5, "4", True] + ([task.max_size + 1] if task.max_size is not None else [])
    for size in bad:
        with pytest.raises(TaskError) as e:
            task.batch(random.Random(0), size, 2)
        msg = str(e.value)
        assert "\n" not in msg and f"{task.size_name}=" in msg and repr(name) in msg
        with pytest.raises(TaskError):
            task.checked_example(random.Random(0), size)


def test_bad_knobs():
    from bdh.tasks.builtin import ECA, MQAR, Copy, VarTrack

    for make, knob in [(lambda: ECA(rule=256), "rule=256"), (lambda: ECA(width=2), "width=2"),
                       (lambda: MQAR(n_keys=0), "n_keys=0"), (lambda: MQAR(distance=-1), "distance=-1"),
                       (lambda: Copy(alphabet=27), "alphabet=27"), (lambda: VarTrack(distractors=-1), "distractors")]:
        with pytest.raises(TaskError, match=knob):
            make()


# ----------------------------------------------------------------------------- answers, recomputed here
def test_parity_answers():
    task = load_task("parity")
    for size in sizes_of(task):
        for ex in examples(task, size, 20):
            bits = [int(t) for t in body(task, ex)]
            assert answers(task, ex) == [str(sum(bits[: i + 1]) % 2) for i in range(size)]


@pytest.mark.parametrize("name", ["copy-blank", "reverse-blank"])
def test_copy_reverse_blank_answers(name):
    task = load_task(name)
    for size in sizes_of(task):
        for ex in examples(task, size, 20):
            toks = body(task, ex)
            assert toks[size] == "|" and toks[size + 1:] == ["_"] * size and len(toks) == 2 * size + 1
            s = toks[:size]
            assert all(c.isalpha() and len(c) == 1 for c in s)
            assert answers(task, ex) == (s[::-1] if name == "reverse-blank" else s)
            assert [i for i, m in enumerate(ex.mask) if m] == list(range(size + 2, 2 * size + 2))


@pytest.mark.parametrize("name", ["copy", "reverse"])
def test_copy_reverse_teacher_forced_answers(name):
    """`<bos> s | s <eos>` in next-token form: the answers are the copy (or reversal) and <eos>, fed back."""
    task = load_task(name)
    for size in sizes_of(task):
        for ex in examples(task, size, 20):
            assert ex.inputs[1:] == ex.targets[:-1]  # next-token form: every target is the next input
            seq = task.decode(ex.inputs + ex.targets[-1:])
            assert seq[0] == "<bos>" and seq[size + 1] == "|" and seq[-1] == "<eos>" and len(seq) == 2 * size + 3
            s = seq[1:size + 1]
            assert all(c.isalpha() and len(c) == 1 for c in s)
            assert answers(task, ex) == (s[::-1] if name == "reverse" else s) + ["<eos>"]
            # scored: from the input `|` (predicting the first copied letter) to the last copied letter
            assert [i for i, m in enumerate(ex.mask) if m] == list(range(size + 1, 2 * size + 2))


def test_addition_answers():
    task = load_task("addition")
    carries = 0
    for size in sizes_of(task):
        for ex in examples(task, size, 30):
            s = "".join(body(task, ex))
            a, rest = s.split("+")
            b, blanks = rest.split("=")
            assert len(a) == len(b) == size and blanks == "_" * (size + 1)
            total = int(a[::-1]) + int(b[::-1])
            assert "".join(answers(task, ex)) == str(total).zfill(size + 1)[::-1]
            carries += total >= 10**size
    assert carries > 0  # the final carry is exercised


def test_mqar_answers():
    task = load_task("mqar")
    for size in sizes_of(task):
        for ex in examples(task, size, 10):
            toks = body(task, ex)
            q = toks.index("?")
            pairs = toks[: 2 * size]
            table = dict(zip(pairs[0::2], pairs[1::2]))
            assert len(table) == size and all(k.startswith("k") and v.startswith("v") for k, v in table.items())
            assert len(set(table.values())) == size  # values distinct, as Zoology's generator
            assert toks[2 * size: q] == ["."] * task.distance
            queries = toks[q + 1:]
            assert sorted(queries) == sorted(table)  # every key queried once
            assert answers(task, ex) == [table[k] for k in queries]
            assert [i for i, m in enumerate(ex.mask) if m] == list(range(q + 2, len(toks) + 1))
    far = type(task)(n_keys=16, n_values=16, distance=5)
    ex = examples(far, 16, 1)[0]
    assert body(far, ex)[32:38] == ["."] * 5 + ["?"]
    assert type(task)(n_keys=16, n_values=4).max_size == 4  # distinct values bound the pairs


def test_vartrack_answers():
    task = load_task("vartrack")
    assert task.max_size >= 8 * task.train_size
    for size in sizes_of(task) + [task.max_size]:
        for ex in examples(task, size, 10):
            toks = body(task, ex)
            assert toks[-3] == "?" and toks[-1] == "_" and ex.mask == [False] * len(toks) + [True]
            stmts = toks[:-3]
            assert len(stmts) == 4 * (task.distractors + 1) * (size + 1)
            env = {}
            for i in range(0, len(stmts), 4):
                name, eq, val, semi = stmts[i: i + 4]
                assert eq == "=" and semi == ";" and name not in env
                env[name] = val if val.isdigit() else env[val]  # a copy refers to a name assigned earlier
            # the queried name sits at the end of a chain of exactly `size` copies
            name, hops = toks[-2], 0
            defs = {stmts[i]: stmts[i + 2] for i in range(0, len(stmts), 4)}
            while not defs[name].isdigit():
                name, hops = defs[name], hops + 1
            assert hops == size
            assert answers(task, ex) == [env[toks[-2]]]


RULE30 = {"111": 0, "110": 0, "101": 0, "100": 1, "011": 1, "010": 1, "001": 1, "000": 0}
RULE110 = {"111": 0, "110": 1, "101": 1, "100": 0, "011": 1, "010": 1, "001": 1, "000": 0}


def table_step(row, table):
    n = len(row)
    return [table[f"{row[i - 1]}{row[i]}{row[(i + 1) % n]}"] for i in range(n)]


def test_eca_rule_by_hand():
    one = [0, 0, 0, 1, 0, 0, 0, 0]
    assert eca_step(one, 30) == [0, 0, 1, 1, 1, 0, 0, 0]
    assert eca_step(one, 110) == [0, 0, 1, 1, 0, 0, 0, 0]
    wrap = [1, 0, 0, 0, 0, 0, 0, 1]  # the ring: cell 0's left neighbour is cell 7
    assert eca_step(wrap, 30) == [0, 1, 0, 0, 0, 0, 1, 1]
    assert eca_step(wrap, 110) == [1, 0, 0, 0, 0, 0, 1, 1]
    assert eca_step([1, 0, 0, 1], 30) == [0, 1, 1, 1] and eca_step([0, 1, 1, 1], 30) == [0, 1, 0, 0]
    rng = random.Random(0)
    for _ in range(50):
        row = [rng.randrange(2) for _ in range(rng.randrange(3, 20))]
        assert eca_step(row, 30) == table_step(row, RULE30)
        assert eca_step(row, 110) == table_step(row, RULE110)


@pytest.mark.parametrize("rule,table", [(30, RULE30), (110, RULE110)])
def test_eca_rollout_answers(rule, table):
    task = type(load_task("eca"))(rule=rule, width=12)
    for size in sizes_of(task):
        for ex in examples(task, size, 10):
            assert ex.inputs[1:] == ex.targets[:-1]  # next-token form
            seq = task.decode(ex.inputs + ex.targets[-1:])
            assert seq[0] == "<bos>"
            rows = "".join(seq[1:]).split("|")
            assert len(rows) == size + 1 and all(len(r) == 12 for r in rows)
            rows = [[int(c) for c in r] for r in rows]
            for a, b in zip(rows, rows[1:]):
                assert b == table_step(a, table)
            # answers: every cell of rows 1..steps, in order; separators and row 0 unscored
            assert "".join(answers(task, ex)) == "".join(str(c) for r in rows[1:] for c in r)
            assert sum(ex.mask) == 12 * size


ALL_4X4 = None


def all_4x4_grids() -> list[tuple[int, ...]]:
    global ALL_4X4
    if ALL_4X4 is None:
        rows = list(itertools.permutations(range(1, 5)))
        grids = [()]
        for _ in range(4):  # add rows whose columns stay distinct, then keep the valid grids
            grids = [g + r for g in grids for r in rows if all(r[c] not in g[c::4] for c in range(4))]
        ALL_4X4 = [g for g in grids if valid_grid(g, 2)]
    return ALL_4X4


def valid_grid(g, box) -> bool:
    n = box * box
    digits = set(range(1, n + 1))
    rows = [g[r * n:(r + 1) * n] for r in range(n)]
    cols = [g[c::n] for c in range(n)]
    boxes = [[g[(br + a) * n + bc + b] for a in range(box) for b in range(box)]
             for br in range(0, n, box) for bc in range(0, n, box)]
    return all(set(u) == digits for u in rows + cols + boxes)


def check_sudoku(task, ex, box, size, independent_count):
    n = box * box
    cells = n * n
    toks = body(task, ex)
    assert len(toks) == 2 * cells and toks[cells:] == ["_"] * cells
    puzzle = [int(t) for t in toks[:cells]]
    solution = [int(task.vocab[t]) for t in ex.targets[cells + 1:]]
    assert puzzle.count(0) == size
    assert valid_grid(solution, box)
    assert all(p in (0, s) for p, s in zip(puzzle, solution))  # agrees with the givens
    assert ex.mask == [False] * (cells + 1) + [p == 0 for p in puzzle]  # scored: the blanks' outputs
    assert independent_count(puzzle) == 1  # the solution is unique


def test_sudoku4_unique_and_valid():
    task = load_task("sudoku4")
    grids = all_4x4_grids()
    assert len(grids) == 288 and count_solutions([0] * 16, 2, 1000) == 288

    def count(puzzle):  # brute force over all 288 grids: independent of the task's solver
        return sum(all(p in (0, v) for p, v in zip(puzzle, g)) for g in grids)

    for size in range(1, 13):
        for ex in examples(task, size, 10 if size < 12 else 4, seed=size):
            check_sudoku(task, ex, 2, size, count)
    seen = {tuple(random_solved_grid(random.Random(i), 2)) for i in range(3000)}
    assert len(seen) == 288  # every 4x4 grid is reachable


def test_sudoku9_unique_and_valid():
    task = load_task("sudoku9")
    assert "GPU" in type(task).__doc__
    for size in (5, task.train_size, task.max_size):
        for ex in examples(task, size, 2, seed=size):
            check_sudoku(task, ex, 3, size, lambda p: count_solutions(p, 3, 2))
    # the solver counts: a full grid has one completion, a deadly rectangle two, a clash none
    g = random_solved_grid(random.Random(1), 3)
    assert valid_grid(g, 3) and count_solutions(g, 3) == 1
    bad = list(g)
    bad[1] = bad[0]
    assert count_solutions(bad, 3) == 0
    assert count_solutions([0] * 81, 3, 2) == 2


# ----------------------------------------------------------------------------- load_task and user tasks
class Majority(Task):
    """A user task defined in this test file: the majority bit of an odd-length stream, at a final blank."""

    name = "majority"
    vocab = ("<pad>", "0", "1", "_")
    size_name, train_size = "length", 5

    def example(self, rng, size):
        bits = [rng.randrange(2) for _ in range(size)]
        maj = int(2 * sum(bits) > size)
        return Example([1 + b for b in bits] + [3], [0] * size + [1 + maj], [False] * size + [True])


def test_load_task_unknown():
    for ref in ("nosuch", "", "nosuch.module.here:X"):
        with pytest.raises(TaskError) as e:
            load_task(ref)
        assert "\n" not in str(e.value)
    with pytest.raises(TaskError, match="'nosuch'.*parity"):
        load_task("nosuch")
    with pytest.raises(TaskError, match="does not exist"):
        load_task("/no/such/file.py:X")
    with pytest.raises(TaskError, match="no attribute 'Nope'"):
        load_task(f"{__file__}:Nope")
    with pytest.raises(TaskError, match="expected a bdh.tasks.Task"):
        load_task(f"{__file__}:BUILTINS")


def test_user_task_from_this_file():
    task = load_task(f"{__file__}:Majority")
    assert task.name == "majority" and type(task).__name__ == "Majority"
    x, y, m = task.batch(random.Random(0), 7, 16)
    assert x.shape == (16, 8) and m.sum() == 16
    for xi, yi in zip(x.tolist(), y.tolist()):
        bits = [t - 1 for t in xi[:7]]
        assert yi[-1] == 1 + int(sum(bits) >= 4)


def test_user_task_from_file_and_module(tmp_path, monkeypatch):
    src = textwrap.dedent('''
        from bdh.tasks import Example, Task

        class Count(Task):
            name = "count"
            vocab = ("<pad>", "a", "_", *(str(i) for i in range(10)))
            size_name, train_size, max_size = "n", 4, 9

            def example(self, rng, size):
                k = rng.randint(1, size)
                return Example([1] * k + [2], [0] * k + [3 + k], [False] * k + [True])

        INSTANCE = Count()
    ''')
    (tmp_path / "count_task.py").write_text(src)
    by_file = load_task(f"{tmp_path / 'count_task.py'}:Count")
    monkeypatch.syspath_prepend(str(tmp_path))
    by_module = load_task("count_task:INSTANCE")
    for task in (by_file, by_module):
        x, y, m = task.batch(random.Random(0), 9, 8)
        counts = (x == 1).sum(1)
        assert torch.equal(y[m], 3 + counts)
        with pytest.raises(TaskError, match="n=10"):
            task.batch(random.Random(0), 10, 1)
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(TaskError, match="RuntimeError: boom"):
        load_task(f"{tmp_path / 'broken.py'}:X")
    needs_args = src.replace("INSTANCE = Count()", "").replace(
        "def example", "def __init__(self, k):\n        pass\n\n    def example")
    (tmp_path / "needs_args.py").write_text(needs_args)
    with pytest.raises(TaskError, match="without arguments"):
        load_task(f"{tmp_path / 'needs_args.py'}:Count")
    sys.modules.pop("count_task", None)


MALFORMED = {
    "wrong lengths": (lambda s: Example([1] * s, [1] * (s - 1), [True] * s), "lengths"),
    "id outside vocab": (lambda s: Example([1] * s, [7] * s, [True] * s), "id 7, outside the vocabulary"),
    "negative id": (lambda s: Example([-1] * s, [1] * s, [True] * s), "outside the vocabulary"),
    "empty mask": (lambda s: Example([1] * s, [1] * s, [False] * s), "no answer position"),
    "pad answer": (lambda s: Example([1] * s, [0] * s, [True] * s), "padding"),
    "empty": (lambda s: Example([], [], []), "lengths"),
    "not an Example": (lambda s: ([1] * s, [1] * s, [True] * s), "expected a bdh.tasks.Example"),
}


@pytest.mark.parametrize("what", MALFORMED)
def test_malformed_user_task(what, tmp_path):
    make, message = MALFORMED[what]

    class Bad(Task):
        name = "bad"
        vocab = ("<pad>", "a", "b")

        def example(self, rng, size):
            return make(size)

    with pytest.raises(TaskError, match=message) as e:
        Bad().batch(random.Random(0), 4, 2)
    assert "'bad'" in str(e.value) and "size=4" in str(e.value) and "\n" not in str(e.value)


def test_exact_match_and_masked_loss_on_a_batch():
    task = load_task("addition")
    x, y, m = task.batch(random.Random(0), 4, 8)
    logits = torch.nn.functional.one_hot(y, task.vocab_size).float() * 20
    assert exact_match(logits, y, m).tolist() == [1.0] * 8
    assert masked_loss(logits, y, m) < 1e-6
    wrong = logits.clone()
    i = m[0].nonzero()[0, 0]
    wrong[0, i] = torch.roll(wrong[0, i], 1)
    assert exact_match(wrong, y, m).tolist() == [0.0] + [1.0] * 7
    wrong_unscored = logits.clone()
    wrong_unscored[:, 0] = torch.roll(wrong_unscored[:, 0], 1, dims=-1)  # position 0 is not an answer
    assert exact_match(wrong_unscored, y, m).tolist() == [1.0] * 8


# ----------------------------------------------------------------------------- user code and bounds (issue 23, item 2)
class Bits(Task):
    """Echo of random bits; `fail_at` sizes raise (a user's example() failing late)."""
    name = "bits"
    vocab = ("<pad>", "0", "1")
    size_name, train_size = "length", 4
    fail_at: tuple[int, ...] = ()

    def example(self, rng, size):
        if size in self.fail_at:
            raise ZeroDivisionError(f"no bits at {size}\nsecond line")
        bits = [1 + rng.randrange(2) for _ in range(size)]
        return Example(bits, bits, [True] * size)


class FailsAt3(Bits):
    """Fails at length 3: inside [1, 4], but neither end (the sizes the up-front check used to try)."""
    fail_at = (3,)


def test_user_code_that_raises_is_one_task_error():
    task = Bits()
    task.fail_at = (5,)
    for call in (lambda: task.batch(random.Random(0), 5, 2), lambda: task.checked_example(random.Random(0), 5)):
        with pytest.raises(TaskError) as e:
            call()
        assert str(e.value) == "task 'bits' (length=5): example() raised ZeroDivisionError: no bits at 5"
        assert e.value.__cause__ is None and e.value.__suppress_context__


def test_the_run_check_tries_every_validation_size():
    """A task run refuses a task failing at a validation size before anything is written (before: only the
    smallest and largest sizes were tried, so length 3 failed in the trainer, after the tokenizer was saved)."""
    from bdh.tasks import task_run_config

    with pytest.raises(TaskError, match=r"'bits' \(length=3\): example\(\) raised ZeroDivisionError"):
        task_run_config(f"{__file__}:FailsAt3")


class _Vocab(Bits):
    @property
    def vocab(self):
        raise KeyError("vocab")


def _with(**attrs) -> Task:
    t = Bits()
    for k, v in attrs.items():
        setattr(t, k, v)
    return t


BAD_DECLARATIONS = {
    "vocabulary over MAX_VOCAB": (lambda: _with(vocab=("<pad>", *map(str, range(MAX_VOCAB)))),
                                  f"vocabulary of {MAX_VOCAB + 1} tokens: expected 2 to {MAX_VOCAB}"),
    "one-token vocabulary": (lambda: _with(vocab=("<pad>",)), "vocabulary of 1 tokens: expected 2"),
    "vocabulary a string": (lambda: _with(vocab="<pad>ab"), "vocab='<pad>ab': expected a tuple or list"),
    "vocabulary of ints": (lambda: _with(vocab=("<pad>", 1)), r"vocab\[1\]=1: expected a string"),
    "vocab raises": (_Vocab, "reading vocab raised KeyError"),
    "name": (lambda: _with(name=3), "name=3: expected a non-empty string"),
    "size_name": (lambda: _with(size_name=""), "size_name='': expected a non-empty string"),
    "min_size": (lambda: _with(min_size="1"), "min_size='1': expected a non-negative integer"),
    "max_size": (lambda: _with(min_size=4, max_size=2), "max_size=2: expected None or an integer >= min_size 4"),
    "train_size": (lambda: _with(max_size=3), r"length=4: expected >= 1 and <= 3"),
    "train_size over MAX_SIZE": (lambda: _with(train_size=MAX_SIZE + 1), f"length={MAX_SIZE + 1}: .*<= {MAX_SIZE}"),
}


@pytest.mark.parametrize("what", BAD_DECLARATIONS)
def test_declared_attributes_are_checked(what):
    make, message = BAD_DECLARATIONS[what]
    with pytest.raises(TaskError, match=message) as e:
        check_task(make())
    assert "\n" not in str(e.value)


def test_user_files_are_checked_when_loaded_and_write_no_bytecode(tmp_path):
    src = textwrap.dedent('''
        from bdh.tasks import Task

        class Huge(Task):
            name = "huge"
            vocab = ("<pad>", *map(str, range(5_000_000)))

        class Raises(Task):
            def __init__(self):
                raise RuntimeError("no init\\nsecond line")
    ''')
    (tmp_path / "user_task.py").write_text(src)
    with pytest.raises(TaskError, match=f"task 'huge': a vocabulary of 5000001 tokens: expected 2 to {MAX_VOCAB}"):
        load_task(f"{tmp_path / 'user_task.py'}:Huge")
    with pytest.raises(TaskError, match=r"Raises\(\) raised RuntimeError: no init$"):
        load_task(f"{tmp_path / 'user_task.py'}:Raises")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["user_task.py"]  # no __pycache__ beside it


def test_sizes_examples_and_batches_are_bounded():
    parity = load_task("parity")
    assert parity.check_size(MAX_SIZE) == MAX_SIZE
    with pytest.raises(TaskError, match=f"length={MAX_SIZE + 1}: expected >= 1 and <= {MAX_SIZE} "):
        parity.check_size(MAX_SIZE + 1)  # before: accepted (a task without max_size had no bound)
    capped = _with(max_size=10**12)
    with pytest.raises(TaskError, match=f"<= {MAX_SIZE} "):
        capped.check_size(MAX_SIZE + 1)

    class Long(Bits):
        def example(self, rng, size):
            n = MAX_EXAMPLE_TOKENS + 1
            return Example([1] * n, [1] * n, [True] * n)

    with pytest.raises(TaskError, match=f"{MAX_EXAMPLE_TOKENS + 1} tokens: expected at most {MAX_EXAMPLE_TOKENS}"):
        Long().checked_example(random.Random(0), 2)

    calls = []

    class Counted(Bits):
        def example(self, rng, size):
            calls.append(size)
            return super().example(rng, size)

    n = MAX_BATCH_TOKENS // 4 + 1
    with pytest.raises(TaskError, match=f"{n} examples of 4 tokens.*expected at most {MAX_BATCH_TOKENS}"):
        Counted().batch(random.Random(0), 4, n)
    assert calls == [4]  # refused after the first example, before the rest are generated
    x, _, _ = Counted().batch(random.Random(0), 4, MAX_BATCH_TOKENS // 4 // 1024)  # within the bound: served
    assert x.shape == (MAX_BATCH_TOKENS // 4 // 1024, 4)


def test_task_at_a_training_size():
    """REF@SIZE: the task of REF trained at SIZE (sizes drawn up to it, multiples of an evaluation of it), the same
    examples as REF, named NAME@SIZE; REF's own class untouched; a size it cannot generate is a TaskError."""
    from bdh.tasks.compare.planning import plan
    from bdh.training.config import DataConfig

    t, base = load_task("s5@4"), load_task("s5")
    assert (t.name, t.train_size, base.train_size, type(t).train_size) == ("s5@4", 4, 16, 16)
    assert t.example(random.Random(3), 7) == base.example(random.Random(3), 7)
    assert DataConfig(corpus="task:s5@4").task_sizes(t) == (1, 4)
    _, runs = plan("smoke", ["parity@8"], 1)
    assert {r.task_name for r in runs} == {"parity@8"} and runs[0].train_size == 8
    assert runs[0].eval_sizes == [8, 16, 32] and runs[0].key.startswith("parity@8/")
    for ref, words in (("s5@0", "positive integer"), ("s5@x", "positive integer"), ("s5@", "positive integer"),
                       ("parity@70000", "training size"), ("nosuch@4", "unknown task")):
        with pytest.raises(TaskError) as e:
            load_task(ref)
        assert words in str(e.value) and "\n" not in str(e.value), (ref, str(e.value))
