"""The registry of data-source kinds, keyed by the prefix of `data.corpus` (see `bdh.training.data_source`).

    register_data_source("task:", TaskSource)      # bdh.tasks does this when it is imported
    data_source_kind("task:parity")                # -> TaskSource; "shakespeare" -> CorpusSource
"""

from __future__ import annotations

from .corpus import CorpusSource
from .data_source import DataSource

_SOURCES: dict[str, type[DataSource]] = {}


def register_data_source(prefix: str, cls: type[DataSource]) -> None:
    """`data.corpus = "<prefix>REF"` trains on `cls` (a DataSource subclass); registering a prefix again replaces it."""
    if not prefix or not (isinstance(cls, type) and issubclass(cls, DataSource)):
        raise ValueError(f"register_data_source({prefix!r}, {cls!r}): expected a non-empty prefix and a DataSource "
                         "subclass")
    _SOURCES[prefix] = cls


def data_source_kind(corpus: str) -> type[DataSource]:
    """The source class of `data.corpus`: the registered kind of its (longest) prefix, else `CorpusSource`."""
    for prefix in sorted(_SOURCES, key=len, reverse=True):
        if corpus.startswith(prefix):
            return _SOURCES[prefix]
    return CorpusSource
