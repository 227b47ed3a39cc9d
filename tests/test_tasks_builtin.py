"""bdh.tasks standard formats (issue 25, items 3 and 4): the start token of every built-in, the teacher-forced forms,
and the tasks from the literature (selective copying, induction heads, Dyck-k, passkey retrieval, S5 state
tracking), each answer recomputed here independently; sizes bounded, knobs checked (< 10 s)."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from bdh.tasks import MAX_EXAMPLE_TOKENS, TASKS, Example, Task, TaskError, load_task
from bdh.tasks.base import BOS, BOS_ID

from test_tasks import BUILTINS, answers, examples, sizes_of  # noqa: E402  (one copy of the task-test helpers)

NEW = ["selective-copy", "induction", "dyck", "passkey", "s5"]
TEACHER_FORCED = ["copy", "reverse", "eca", "passkey"]  # next-token form: every target is the next input


def scored(ex: Example) -> list[int]:
    return [i for i, m in enumerate(ex.mask) if m]


# ----------------------------------------------------------------------------- every built-in
def test_new_tasks_registered_with_docstrings():
    load_task("parity")
    assert set(NEW) <= set(TASKS) and set(BUILTINS) <= set(TASKS)
    for name in NEW + ["copy", "reverse", "copy-blank", "reverse-blank", "mqar"]:
        doc = TASKS[name].__doc__
        assert "Format" in doc and "Size:" in doc and "Source" in doc, name
        if name not in ("copy-blank", "reverse-blank"):  # (this project's own forms)
            assert "differs" in doc, name  # where ours differs from the published generator


@pytest.mark.parametrize("name", BUILTINS)
def test_every_example_starts_with_the_start_token(name):
    task = load_task(name)
    assert task.vocab[BOS_ID] == BOS == "<bos>"
    for size in sorted({task.min_size, *sizes_of(task)})[:3]:
        for ex in examples(task, size, 5, seed=size):
            assert ex.inputs[0] == BOS_ID and BOS_ID not in ex.inputs[1:] and not ex.mask[0]
            assert BOS_ID not in [t for t, m in zip(ex.targets, ex.mask) if m]


@pytest.mark.parametrize("name", TEACHER_FORCED)
def test_teacher_forced_answers_are_fed_back(name):
    task = load_task(name)
    for ex in examples(task, task.train_size, 10):
        assert ex.inputs[1:] == ex.targets[:-1]
        for i in scored(ex)[:-1]:
            assert ex.inputs[i + 1] == ex.targets[i]  # each answer is the next input


def test_copy_and_copy_blank_share_the_string():
    for a, b in (("copy", "copy-blank"), ("reverse", "reverse-blank")):
        ta, tb = load_task(a), load_task(b)
        for ea, eb in zip(examples(ta, 8, 5), examples(tb, 8, 5)):
            assert ta.decode(ea.inputs[:10]) == tb.decode(eb.inputs[:10])  # <bos> s |
            assert answers(ta, ea)[:-1] == answers(tb, eb) and answers(ta, ea)[-1] == "<eos>"


@pytest.mark.parametrize("name", NEW)
def test_new_tasks_sizes_bounded(name):
    task = load_task(name)
    lo = task.min_size
    ex = task.checked_example(random.Random(0), lo)  # the smallest size is served
    assert len(ex.inputs) <= MAX_EXAMPLE_TOKENS
    for bad in (lo - 1, 0):
        with pytest.raises(TaskError, match=f"{task.size_name}={bad}: expected >= {lo}"):
            task.checked_example(random.Random(0), bad)
    # lengths grow with the size, linearly
    n1, n2 = (len(task.checked_example(random.Random(0), s).inputs) for s in (task.train_size, 2 * task.train_size))
    assert n1 < n2 <= 2 * n1 + 2


def test_new_task_knobs_are_checked():
    from bdh.tasks.standard import Dyck, Induction, Passkey, S5Task, SelectiveCopy

    for make, knob in [(lambda: SelectiveCopy(tokens=0), "tokens=0"), (lambda: SelectiveCopy(tokens=33), "tokens=33"),
                       (lambda: SelectiveCopy(alphabet=27), "alphabet=27"), (lambda: Induction(alphabet=2), "alphabet=2"),
                       (lambda: Dyck(k=0), "k=0"), (lambda: Dyck(k=9), "k=9"), (lambda: Dyck(max_depth=-1), "max_depth"),
                       (lambda: Passkey(digits=0), "digits=0"), (lambda: S5Task(every_step=1), "every_step=1")]:
        with pytest.raises(TaskError, match=knob):
            make()


# ----------------------------------------------------------------------------- selective copying
@pytest.mark.parametrize("tokens", [1, 4, 16])
def test_selective_copy_answers(tokens):
    task = type(load_task("selective-copy"))(tokens=tokens, alphabet=5)
    assert task.min_size == tokens
    seen_positions = set()
    for size in [tokens] + sizes_of(task):
        for ex in examples(task, size, 10, seed=size):
            toks = task.decode(ex.inputs)
            region, markers = toks[1:size + 1], toks[size + 1:]
            assert markers == ["*"] * tokens and len(toks) == 1 + size + tokens
            letters = [t for t in region if t != "."]
            assert len(letters) == tokens and set(letters) <= set("abcde")
            assert answers(task, ex) == letters  # in order of appearance
            assert scored(ex) == list(range(size + 1, size + 1 + tokens))
            seen_positions |= {i for i, t in enumerate(region) if t != "."}
    assert len(seen_positions) > tokens  # the positions are drawn, not fixed


# ----------------------------------------------------------------------------- induction heads
def test_induction_answers():
    task = load_task("induction")
    for size in [2, 3] + sizes_of(task):
        for ex in examples(task, size, 20, seed=size):
            toks = task.decode(ex.inputs)[1:]
            assert len(toks) == size + 1 and scored(ex) == [size + 1]
            a = toks[-1]
            earlier = [i for i, t in enumerate(toks[:-1]) if t == a]
            assert len(earlier) == 1 and earlier[0] < size - 1  # A occurs once before the query, followed by B
            b = toks[earlier[0] + 1]
            assert b != a and answers(task, ex) == [b]


# ----------------------------------------------------------------------------- Dyck-k
def dyck_targets(brackets: list[str], pairs: list[str]) -> tuple[list[str], int]:
    """The closer of the innermost open bracket after each bracket ('-' when none), by an explicit stack; and the
    largest depth reached. Fails on a closer that does not match."""
    close_of = {p[0]: p[1] for p in pairs}
    stack, out, deepest = [], [], 0
    for b in brackets:
        if b in close_of:
            stack.append(b)
        else:
            assert stack and close_of[stack[-1]] == b, "a closer that does not match"
            stack.pop()
        deepest = max(deepest, len(stack))
        out.append(close_of[stack[-1]] if stack else "-")
    return out, deepest


@pytest.mark.parametrize("k,max_depth", [(1, 0), (2, 0), (4, 3), (8, 0)])
def test_dyck_answers(k, max_depth):
    task = type(load_task("dyck"))(k=k, max_depth=max_depth)
    pairs = ["()", "[]", "{}", "<>", "⟨⟩", "⌈⌉", "⌊⌋", "«»"][:k]
    used, deepest_seen = set(), 0
    for size in [1, 2, 3] + sizes_of(task):
        for ex in examples(task, size, 20, seed=size):
            toks = task.decode(ex.inputs)[1:]
            want, deepest = dyck_targets(toks, pairs)
            assert answers(task, ex) == want and scored(ex) == list(range(1, size + 1))
            if max_depth:
                assert deepest <= max_depth
            if size % 2 == 0:
                assert want[-1] == "-"  # an even length ends balanced
            used |= set(toks)
            deepest_seen = max(deepest_seen, deepest)
    assert used == {c for p in pairs for c in p}  # every bracket kind occurs
    assert deepest_seen >= (max_depth or 4)


# ----------------------------------------------------------------------------- passkey retrieval
def test_passkey_answers():
    task = load_task("passkey")
    filler = "the grass is green . the sky is blue . the sun is yellow . here we go . there and back again .".split()
    assert task.min_size == 38 and task.max_size == 16_384
    positions = set()
    for size in [task.min_size, task.min_size + 1] + sizes_of(task) + [task.max_size]:
        for ex in examples(task, size, 3 if size > 2000 else 10, seed=size):
            assert len(ex.inputs) == size  # the size is the length in tokens
            seq = task.decode(ex.inputs + ex.targets[-1:])
            text = " ".join(seq[1:])
            before, sep, after = text.partition("the pass key is ")
            key = after.split(" . ")[0].split()
            assert sep and len(key) == 5 and all(d.isdigit() for d in key)
            k = " ".join(key)
            sentence = f"the pass key is {k} . remember it . {k} is the pass key ."
            assert text.count(sentence) == 1
            assert text.endswith(f"what is the pass key ? the pass key is {k}")
            assert answers(task, ex) == key and scored(ex) == list(range(size - 5, size))
            rest = text.replace(sentence, "").removesuffix(f"what is the pass key ? the pass key is {k}").split()
            assert rest == [filler[i % len(filler)] for i in range(len(rest))]  # the rest is the filler, in order
            assert before == "" or before.endswith(". ")  # the key sits at a sentence boundary
            positions.add(len(before.split()))
    assert len(positions) > 10


def test_passkey_digits_knob():
    task = type(load_task("passkey"))(digits=3)
    assert task.min_size == 23 + 9
    for ex in examples(task, 64, 10):
        assert len(answers(task, ex)) == 3 and len(ex.inputs) == 64


# ----------------------------------------------------------------------------- S5 state tracking
def compose_numpy(gs: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """Running composition by numpy fancy indexing: the arrangement after each step, arr <- arr[g]."""
    arr, out = np.arange(5), []
    for g in gs:
        arr = arr[np.array(g)]
        out.append(tuple(int(v) for v in arr))
    return out


def test_s5_by_hand_and_matrices():
    task = load_task("s5")
    assert len(task.vocab) == 122 and sorted(task.vocab[2:]) == ["".join(map(str, p))
                                                                  for p in itertools.permutations(range(5))]
    # the docstring's example
    gs = [(1, 0, 2, 3, 4), (1, 2, 0, 3, 4), (0, 1, 2, 4, 3)]
    assert ["".join(map(str, p)) for p in compose_numpy(gs)] == ["10234", "02134", "02143"]
    # the same composition as a product of permutation matrices: M(p)[i, p[i]] = 1, M(P_t) = M(g_t) M(P_{t-1})
    rng = random.Random(0)
    gs = [tuple(rng.sample(range(5), 5)) for _ in range(30)]
    m = np.eye(5, dtype=int)
    for g, p in zip(gs, compose_numpy(gs)):
        mg = np.zeros((5, 5), dtype=int)
        mg[np.arange(5), g] = 1
        m = mg @ m
        assert tuple(int(v) for v in m @ np.arange(5)) == p


def test_s5_answers():
    task = load_task("s5")
    seen = set()
    for size in [1] + sizes_of(task):
        for ex in examples(task, size, 20, seed=size):
            gs = [tuple(int(c) for c in t) for t in task.decode(ex.inputs)[1:]]
            assert len(gs) == size and all(sorted(g) == list(range(5)) for g in gs)
            want = ["".join(map(str, p)) for p in compose_numpy(gs)]
            assert answers(task, ex) == want and scored(ex) == list(range(1, size + 1))
            seen |= set(want)
    assert len(seen) == 120  # every element of the group is reached
    final = type(task)(every_step=False)
    for ex, ex_all in zip(examples(final, 12, 10), examples(task, 12, 10)):
        assert ex.inputs == ex_all.inputs and ex.targets == ex_all.targets
        assert scored(ex) == [12] and answers(final, ex) == answers(task, ex_all)[-1:]


def test_new_tasks_deterministic_across_instances():
    for name in NEW:
        a, b = load_task(name), load_task(name)
        assert isinstance(a, Task) and a is not b
        ea, eb = examples(a, a.train_size, 4, seed=9), examples(b, b.train_size, 4, seed=9)
        assert ea == eb and ea != examples(a, a.train_size, 4, seed=10)
