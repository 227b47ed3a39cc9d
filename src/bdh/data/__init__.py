"""Offline corpora, the token cache, and the translation stream."""

from .cache import build_token_cache, cache_corpus, load_tokens, token_dtype
from .corpora import (
    CorpusSplits,
    decode_bytes,
    pydoc_english,
    read_documents,
    read_text_source,
    resolve_corpus,
    shakespeare,
    shakespeare_plays,
    split_text,
)
from .translation import gettext_languages, gettext_pairs, load_parallel, parse_translation_stream, translation_stream

__all__ = [
    "CorpusSplits",
    "build_token_cache",
    "cache_corpus",
    "decode_bytes",
    "gettext_languages",
    "gettext_pairs",
    "load_parallel",
    "load_tokens",
    "parse_translation_stream",
    "pydoc_english",
    "read_documents",
    "read_text_source",
    "resolve_corpus",
    "shakespeare",
    "shakespeare_plays",
    "split_text",
    "token_dtype",
    "translation_stream",
]
