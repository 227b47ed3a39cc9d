"""Built-in sentence sets for the concept-synapse search (paper §6.3: "currency" vs EU politics without
currencies). Written for this package (English, with a few French sentences as in the paper's examples).
The contrast sentences match the concept sentences word count for word count and in mean byte length (a
synapse that counts words or bytes cannot separate the sets). Replace them with your own files
(`bdh analyze --concept FILE --contrast FILE`, one sentence per line).
"""

from __future__ import annotations

import os
from pathlib import Path

CURRENCY = [
    "The euro fell against the dollar after the central bank meeting.",
    "Prices in Poland are still quoted in zloty, not in euros.",
    "The British pound gained two cents against the euro today.",
    "He paid fifty dollars for the ticket and kept the change.",
    "The Swiss franc is seen as a safe currency in a crisis.",
    "Exporters complain that the strong yen hurts their sales.",
    "The exchange rate between the crown and the euro is stable.",
    "Tourists changed their pounds sterling into euros at the airport.",
    "A weaker dollar makes American goods cheaper abroad.",
    "The bank printed new notes of twenty euros last year.",
    "Investors sold the lira and bought Swiss francs.",
    "The forint lost value after the announcement.",
    "One euro was worth about four zloty in that year.",
    "The coin of two euros shows a map of Europe.",
    "Sweden kept the krona and did not adopt the euro.",
    "The price of the car was ten thousand pounds.",
    "The central bank defended the peso by raising rates.",
    "Traders watch the dollar and the euro every morning.",
    "La livre sterling a baissé face à l'euro.",
    "Le franc suisse reste une monnaie refuge.",
    "Il a payé vingt euros pour le livre.",
    "Le dollar américain a gagné du terrain sur le yen.",
    "The rouble fell sharply and the dollar became expensive.",
    "Savings in Czech crowns lost value when the euro rose.",
]

POLITICS = [  # word counts matched one to one with CURRENCY, byte lengths within ~2 on average
    "The House adopted the report on farm aid after the debate.",
    "The Commission will show its plan to the committee next month.",
    "Members of the committee discussed the new rules on safety.",
    "The Council reached a deal on asylum rules late on Tuesday.",
    "We thank our friends in all the groups for their help today.",
    "We must protect the rights of workers in Europe.",
    "The debate on enlargement will go on in the plenary tomorrow.",
    "The President opened the session and read the full agenda.",
    "Several groups tabled amendments to the waste law.",
    "The treaty gives national parliaments a role in the Union.",
    "The vote on the resolution was postponed again.",
    "The minister answered questions about the roads.",
    "All citizens expect clear rules on the use of data.",
    "A pact with our neighbours covers gas and the roads.",
    "The committee heard experts on the climate and the sea.",
    "The Member States must apply the law next year.",
    "The House rejected the motion by a large majority.",
    "The delegation visited the border region and met mayors.",
    "Le Parlement a voté le rapport sur l'emploi.",
    "La Commission a fait sa proposition hier.",
    "Le débat sur la pêche reprend ce soir.",
    "Le groupe socialiste a voté contre la loi sur l'eau.",
    "The resolution calls for more cooperation on basic science.",
    "The hearing of the new candidate lasted three long hours.",
]


def read_sentences(path: str | os.PathLike, *, label: str = "sentence file") -> list[str]:
    """Non-empty stripped lines of a UTF-8 text file.

    A missing path, a directory, an unreadable, binary (NUL bytes or not UTF-8) or empty file is a one-line
    error (FileNotFoundError, IsADirectoryError, ValueError) that starts with `label` and the path."""
    name = f"{label} {os.fspath(path)!r}"
    p = Path(path)
    if os.fspath(path) == "":
        raise ValueError(f"{name}: empty file name; expected a text file, one sentence per line")
    if not p.exists():
        raise FileNotFoundError(f"{name}: no such file; expected a text file, one sentence per line")
    if p.is_dir():
        raise IsADirectoryError(f"{name}: is a directory; expected a text file, one sentence per line")
    if not p.is_file():
        raise ValueError(f"{name}: not a regular file; expected a text file, one sentence per line")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise OSError(f"{name}: cannot be read ({e.strerror or type(e).__name__})") from None
    nul = data.find(b"\0")
    if nul >= 0:
        raise ValueError(f"{name}: binary file (NUL byte at offset {nul}); expected UTF-8 text, one sentence per line")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{name}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); expected UTF-8 "
                         "text, one sentence per line") from None
    out = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not out:
        what = "is empty" if not data else "holds only blank lines"
        raise ValueError(f"{name}: {what}; expected one sentence per line")
    return out


def question_sentences(text: str, n: int = 40, *, min_chars: int = 30, max_chars: int = 60,
                       seed: int = 0) -> tuple[list[str], list[str]]:
    """Concept = lines of `text` ending with "?", contrast = lines ending with "." (no "?"), matched in length.

    A corpus-driven concept any English model can have: up to `n` questions (random, seeded) and, for each, the
    unused statement line closest in length. ValueError when the text has fewer than 12 of either.
    """
    import random

    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if min_chars <= len(ln) <= max_chars]
    q = sorted({ln for ln in lines if ln.endswith("?")})
    s = sorted({ln for ln in lines if ln.endswith(".") and "?" not in ln})
    if len(q) < 12 or len(s) < 12:
        raise ValueError(f"question concept: the text has {len(q)} question and {len(s)} statement lines of "
                         f"{min_chars}-{max_chars} characters; need at least 12 of each")
    rng = random.Random(seed)
    rng.shuffle(q)
    rng.shuffle(s)
    q = q[:n]
    pool = list(s)
    contrast = []
    for line in q:
        k = min(range(len(pool)), key=lambda i: abs(len(pool[i]) - len(line)))
        contrast.append(pool.pop(k))
        if not pool:
            break
    return q[: len(contrast)], contrast
