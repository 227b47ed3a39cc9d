"""Built-in tasks from the wider line of work on sequence models (spec §6d): selective copying, induction heads,
Dyck-k bracket matching, passkey retrieval and S5 state tracking. Registered by name in `bdh.tasks.TASKS` (this
module is imported with `bdh.tasks.builtin` by `bdh.tasks.loading`); each starts its examples with `<bos>` (id 1) and says in its docstring
its format, its source and where it differs from the published generator.

    name            size knob (train)  format
    selective-copy  length (32)        <bos> . c . . a . h . b * * * *   targets at the markers `*`: c a h b
    induction       length (32)        <bos> random tokens with one pair A B ... A   target at the last A: B
    dyck            length (16)        <bos> ( [ ] ( ) ...   target at every bracket: the closer of the innermost open
    passkey         length (128)       <bos> filler, a 5-digit pass key, filler, question, the key (teacher-forced)
    s5              length (16)        <bos> g1 g2 ... gT (permutations of 5)   target at every step: the composition
"""

from __future__ import annotations

import itertools
import random
import string

from .base import BOS, BOS_ID, Example, Task, TaskError, register_task
from .builtin import DIGITS, _int_knob

# ============================================================================ selective copying


@register_task
class SelectiveCopy(Task):
    """Selective copying (Mamba, Gu & Dao 2023, §3.1 and its synthetic generator): `tokens` letters scattered at
    random positions among noise tokens `.`, then `tokens` markers `*`; at the markers the model outputs the
    letters in their order of appearance.

    Format (length 8, tokens 3):
        inputs  <bos> . c . . a . h . * * *
        targets                       c a h    (at the markers; the answers are not fed back, as in Mamba's task)
    The letters' positions are a uniform random `tokens`-subset of the `length` positions of the scattered region (kept
    in order); each letter is uniform over the alphabet. Source: Gu & Dao 2023 (Mamba), a variant of the copying
    task (Arjovsky et al. 2016). As the published generator (data tokens inserted at sorted
    random positions of a noise sequence, followed by one marker per token, outputs at the markers); where ours
    differs: the start token, a noise token `.` of its own (Mamba: id 0) and smaller defaults (Mamba: 16 tokens from
    16 letters in a region of 4096). The size knob is the region's length, noise and letters together; the number of
    letters is fixed, so a larger size means more noise to skip and longer gaps to remember over.
    Knobs: `tokens` (4), `alphabet` (8, at most 26). Size: `length` (train 32, min `tokens`).
    Exact match: every letter, in order.
    """

    name = "selective-copy"
    size_name, train_size = "length", 32

    def __init__(self, tokens: int = 4, alphabet: int = 8):
        self.tokens = _int_knob(self.name, "tokens", tokens, 1, self.train_size)
        self.alphabet = _int_knob(self.name, "alphabet", alphabet, 2, 26)
        self.min_size = self.tokens
        self.vocab = ("<pad>", BOS, ".", "*", *string.ascii_lowercase[:alphabet])

    def example(self, rng: random.Random, size: int) -> Example:
        where = sorted(rng.sample(range(size), self.tokens))
        letters = [4 + rng.randrange(self.alphabet) for _ in range(self.tokens)]
        region = [2] * size
        for i, c in zip(where, letters):
            region[i] = c
        n_ctx = 1 + size
        inputs = [BOS_ID] + region + [3] * self.tokens
        return Example(inputs, [0] * n_ctx + letters, [False] * n_ctx + [True] * self.tokens)


# ============================================================================ induction heads
@register_task
class Induction(Task):
    """Induction heads (Olsson et al. 2022, "In-context learning and induction heads"): a random token sequence in
    which a token A occurs exactly once, followed by B; the sequence ends with A again and the target there is B
    (the pattern [A][B] ... [A] -> [B]).

    Format (length 8):
        inputs  <bos> d g A B c f d e A
        targets                       B     (one answer, at the final A)
    The other `length - 2` tokens are uniform over the alphabet without A (so the earlier A is unique and the
    answer is determined); B is uniform over the alphabet without A; the pair sits at a uniform position.
    Source: Olsson et al. 2022 (the [A][B] ... [A] -> [B] pattern of induction heads). Where
    ours differs: Olsson et al. measure induction on repeated random token sequences inside language models, not
    a trained task; this is the synthetic single-pair form (as H3's "induction head" task, Fu et al. 2023, with a
    random trigger token A instead of a fixed special token).
    Knobs: `alphabet` (16 tokens t0..t15, at least 3). Size: `length` (train 32, min 2): the tokens before the
    query. Exact match: the one answer.
    """

    name = "induction"
    size_name, train_size = "length", 32
    min_size = 2

    def __init__(self, alphabet: int = 16):
        self.alphabet = _int_knob(self.name, "alphabet", alphabet, 3)
        self.vocab = ("<pad>", BOS, *(f"t{i}" for i in range(alphabet)))

    def example(self, rng: random.Random, size: int) -> Example:
        n = self.alphabet
        a = rng.randrange(n)
        b = (a + 1 + rng.randrange(n - 1)) % n  # uniform over the alphabet without a
        filler = [(a + 1 + rng.randrange(n - 1)) % n for _ in range(size - 2)]
        at = rng.randrange(size - 1)
        seq = filler[:at] + [a, b] + filler[at:] + [a]
        inputs = [BOS_ID] + [2 + t for t in seq]
        k = len(inputs)
        return Example(inputs, [0] * (k - 1) + [2 + b], [False] * (k - 1) + [True])


# ============================================================================ Dyck-k
BRACKETS = ("()", "[]", "{}", "<>", "⟨⟩", "⌈⌉", "⌊⌋", "«»")


@register_task
class Dyck(Task):
    """Dyck-k bracket matching: a prefix of a well-nested string over k bracket pairs; the target at every bracket
    is the closing bracket that matches the innermost bracket still open after it, or `-` when none is open.

    Format (length 8, k 2):
        inputs  <bos> ( [ ] ( ) ) [ ]
        targets       ) ] ) ) ) - ] -
    Source: the Dyck-k languages as learning tasks (Suzgun et al. 2019; Ebrahimi et al. 2020; Yao et al. 2021).
    The choice (of "whether", "which" and "depth"): which closing bracket, the one token that carries the stack's
    top. Together with "an opening bracket is always allowed below max_depth" it is exactly the set of valid next
    tokens, the target of the Dyck-k recognition tasks of Ebrahimi et al. 2020 ("How can self-attention networks
    recognize Dyck-n languages?") and Yao et al. 2021 ("Self-attention networks can process bounded hierarchical
    languages", Dyck-(k, m) with bounded depth m). The string is a random walk: at depth 0 it opens, at
    `max_depth` it closes, otherwise it opens or closes with probability 1/2 each, except that it closes whenever
    the remaining length equals the depth (so an even length ends balanced); each opening bracket is uniform over
    the k pairs. Where ours differs: one target token per position instead of a multi-label set, and no end token.
    Knobs: `k` (2 pairs: ( ) [ ]; at most 8), `max_depth` (0 = unbounded: a stack, not a finite automaton).
    Size: `length` (train 16). Exact match: the target at every bracket.
    """

    name = "dyck"
    size_name, train_size = "length", 16

    def __init__(self, k: int = 2, max_depth: int = 0):
        self.k = _int_knob(self.name, "k", k, 1, len(BRACKETS))
        self.max_depth = _int_knob(self.name, "max_depth", max_depth, 0)
        pairs = BRACKETS[:k]
        # 0 pad, 1 <bos>, 2 '-', then opener i at 3 + 2i and its closer at 4 + 2i
        self.vocab = ("<pad>", BOS, "-", *(c for p in pairs for c in p))

    def example(self, rng: random.Random, size: int) -> Example:
        cap = self.max_depth or size
        stack: list[int] = []
        inputs, targets = [BOS_ID], [0]
        for t in range(size):
            left = size - t
            opens = len(stack) == 0 or (len(stack) < cap and left > len(stack) and rng.getrandbits(1))
            if opens:
                i = rng.randrange(self.k)
                stack.append(i)
                inputs.append(3 + 2 * i)
            else:
                inputs.append(4 + 2 * stack.pop())
            targets.append(4 + 2 * stack[-1] if stack else 2)
        return Example(inputs, targets, [False] + [True] * size)


# ============================================================================ passkey retrieval
FILLER = "the grass is green . the sky is blue . the sun is yellow . here we go . there and back again .".split()
QUESTION = "what is the pass key ? the pass key is".split()


def _key_sentence(key: list[str]) -> list[str]:
    return ["the", "pass", "key", "is", *key, ".", "remember", "it", ".", *key, "is", "the", "pass", "key", "."]


@register_task
class Passkey(Task):
    """Passkey retrieval (Mohtashami & Jaggi 2023, "Landmark attention"): a pass key of `digits` digits hidden at a
    random sentence boundary in repeated filler text, asked for at the end; the answer digits are teacher-forced.

    Format (one token per word, digit and `.`/`?`):
        <bos> the grass is green . the sky is blue . ... the pass key is 7 0 4 1 9 . remember it . 7 0 4 1 9 is
        the pass key . here we go . ... what is the pass key ? the pass key is 7 0 4 1 9
    Source: Mohtashami & Jaggi 2023 (their passkey prompt). In next-token form (the model reads the sequence shifted;
    the answers are the final `digits` digits, each fed back as the input of the next). The filler is the published
    one ("The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.") repeated and
    cut to fit; the key sentence and the question are the published ones. Where ours differs: word-level tokens over
    a 34-token vocabulary (lower case, no tokenizer), no opening instruction ("There is an important info hidden
    inside a lot of irrelevant text..."), the key is `digits` uniform digits (leading zeros allowed; theirs an
    integer up to 50,000), and the filler is cut mid-sentence at its end when the length requires it.
    Knobs: `digits` (5). Size: `length`, exactly the number of input tokens (train 128, min 23 + 3 x digits,
    max 16,384). Exact match: every digit of the key.
    """

    name = "passkey"
    size_name, train_size = "length", 128
    max_size = 16_384

    def __init__(self, digits: int = 5):
        self.digits = _int_knob(self.name, "digits", digits, 1, 32)
        self.min_size = 1 + len(_key_sentence([""] * digits)) + len(QUESTION) + digits - 1
        words = list(dict.fromkeys(FILLER + _key_sentence([]) + QUESTION))
        self.vocab = ("<pad>", BOS, *DIGITS, *words)

    def example(self, rng: random.Random, size: int) -> Example:
        ids = self._table()
        key = [rng.choice(DIGITS) for _ in range(self.digits)]
        n_fill = size - self.min_size
        filler = [FILLER[i % len(FILLER)] for i in range(n_fill)]
        starts = [i for i in range(n_fill + 1) if i == 0 or filler[i - 1] == "."]
        at = rng.choice(starts)
        words = [BOS, *filler[:at], *_key_sentence(key), *filler[at:], *QUESTION, *key]
        seq = [ids[w] for w in words]
        return Example.next_token(seq, [False] * (len(seq) - self.digits) + [True] * self.digits)


# ============================================================================ S5 state tracking
S5 = tuple(itertools.permutations(range(5)))  # the 120 elements, in lexicographic order


@register_task
class S5Task(Task):
    """State tracking in S5, the word problem of the symmetric group on 5 elements (Merrill et al. 2024, "The
    Illusion of State in State-Space Models"): a sequence of permutations g1..gT of 5 elements; the target at step
    t is the running composition P_t, with P_0 the identity and P_t[i] = P_{t-1}[g_t[i]] (an arrangement of 5
    items where each step puts at position i the item that was at position g_t[i]).

    Format (length 3), each permutation one token, written as its one-line notation:
        inputs  <bos> 10234 12034 01243
        targets       10234 02134 02143
    Source: Merrill et al. 2024. The permutations are uniform over all 120. As Merrill et al.'s S5 word problem
    (every step's composition is an answer, a sequence-to-sequence task); theory: S5's word problem is NC1-complete,
    so (unless TC0 = NC1) neither constant-depth Transformers nor linear-recurrent (diagonal) state-space models at
    fixed precision, both in TC0, can solve it for unbounded length, while a true recurrence can. With
    `every_step=False` only the final composition is scored (the other targets are still given). Where ours differs:
    the start token; nothing else.
    Knobs: `every_step` (True). Size: `length` (train 16). Exact match: the composition at every scored step.
    """

    name = "s5"
    vocab = ("<pad>", BOS, *("".join(map(str, p)) for p in S5))
    size_name, train_size = "length", 16

    def __init__(self, every_step: bool = True):
        if not isinstance(every_step, bool):
            raise TaskError(f"task {self.name!r}: every_step={every_step!r}: expected True or False")
        self.every_step = every_step
        self._index = {p: i for i, p in enumerate(S5)}

    def example(self, rng: random.Random, size: int) -> Example:
        state = S5[0]
        inputs, targets = [BOS_ID], [0]
        for _ in range(size):
            g = rng.randrange(120)
            p = S5[g]
            state = tuple(state[p[i]] for i in range(5))
            inputs.append(2 + g)
            targets.append(2 + self._index[state])
        mask = [False] + ([True] * size if self.every_step else [False] * (size - 1) + [True])
        return Example(inputs, targets, mask)
