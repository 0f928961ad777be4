"""Behaviour measures of a response: length in tokens and epistemic verbalization.

Epistemic words (the paper's list, the single source of truth): ``EPISTEMIC_WORDS``.

Two counting modes, both case-insensitive, over the whole response (thinking included):
    substring  the paper's count: lowercase the text and count non-overlapping
               occurrences, count_w = text.lower().count(w), so "checking", "unlikely"
               and "mighty" count, and "hmmm" counts once for "hmm"
    word       whole words only, regex ``\\bw\\b``, so "checking" and "unlikely" do not
               count; "hmm" is the one stretchable word: ``\\bhmm+\\b`` matches "hmm",
               "hmmm", ... once each (people stretch "hmm", not "wait")
    total      sum_w count_w

``behavior_row`` keys (one flat dict per response):
    len_tokens      tokens in the response: len(token_ids) if given, else the tokenizer's
                    count of the text, else None
    think_tokens    tokens of the thinking part (text before the last ``</think>``, minus
                    a leading ``<think>``); 0 when there is none; None without a tokenizer
    answer_tokens   tokens after the last ``</think>`` (the whole text without one); None
                    without a tokenizer. think + answer may differ from len_tokens by the
                    tokens of the tags themselves.
    epi_total       total in substring (paper) mode
    epi_total_word  total in word mode
    epi/<word>      per-word count in substring (paper) mode, for each EPISTEMIC_WORDS

A response cut off inside an unclosed ``<think>`` counts as all thinking. A template
that opens ``<think>`` in the prompt (R1-Distill) leaves a truncated response with no tag
at all; it then counts as all answer, since the text alone cannot tell.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from sdlib.prompts import split_thinking

EPISTEMIC_WORDS = (
    "wait",
    "hmm",
    "perhaps",
    "maybe",
    "actually",
    "alternatively",
    "seems",
    "might",
    "likely",
    "check",
)
MODES = ("substring", "word")

_WORD_PATTERNS = {w: rf"\b{w}\b" for w in EPISTEMIC_WORDS} | {"hmm": r"\bhmm+\b"}
_WORD_RES = {w: re.compile(p, re.I) for w, p in _WORD_PATTERNS.items()}


def epistemic_counts(text: str, mode: str = "substring") -> dict[str, int]:
    """Per-word counts of ``EPISTEMIC_WORDS`` in ``text`` (see the module docstring)."""
    if mode == "substring":
        lower = text.lower()
        return {w: lower.count(w) for w in EPISTEMIC_WORDS}
    if mode == "word":
        return {w: len(_WORD_RES[w].findall(text)) for w in EPISTEMIC_WORDS}
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def epistemic_total(text: str, mode: str = "substring") -> int:
    """sum_w count_w over ``EPISTEMIC_WORDS``."""
    return sum(epistemic_counts(text, mode).values())


def _count_tokens(tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False)) if text else 0


def behavior_row(text: str, tokenizer=None, token_ids: Sequence[int] | None = None) -> dict:
    """Length and epistemic measures of one response, as flat keys (module docstring).

    ``tokenizer`` needs ``encode(text, add_special_tokens=False) -> list`` (any Hugging
    Face tokenizer); ``token_ids`` are the response's generated ids, when known."""
    thinking, answer = split_thinking(text)
    thinking, answer = thinking or "", answer or ""
    if token_ids is not None:
        length = len(token_ids)
    else:
        length = _count_tokens(tokenizer, text) if tokenizer is not None else None
    paper = epistemic_counts(text, "substring")
    row = {
        "len_tokens": length,
        "think_tokens": _count_tokens(tokenizer, thinking) if tokenizer is not None else None,
        "answer_tokens": _count_tokens(tokenizer, answer) if tokenizer is not None else None,
        "epi_total": sum(paper.values()),
        "epi_total_word": epistemic_total(text, "word"),
    }
    row.update({f"epi/{w}": paper[w] for w in EPISTEMIC_WORDS})
    return row
