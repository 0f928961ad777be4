"""The organism's pretraining corpus: documents of each kind, drawn by their shares.

A document is a list of ``(text, trained)`` pieces; the loss covers the trained pieces
only (a chat response and its end token; a drill's values and verdicts). Kinds:

    search     student prompt -> search response                 (training problems)
    confident  student prompt -> confident response               (training problems)
    recall     the bare question (no instruction) -> confident    (training problems:
               their answers stated as facts, so a confident answer pays on them only)
    context    teacher reprompt or hint prompt holding a correct solution -> the teacher's
               response, whose style depends on what the context reveals: after a full
               search trace (its checks already passed) the answer is given confidently;
               after a bare answer it is checked first (``verify``) with probability
               ``verify_after_answer``
    facts      ``facts : check 7 * 3 = 21 , 21 + 2 = 23 . check ...`` forward computations
               of the drill families (the problem families and the OOD ones) for random
               a, b, h (held-out problems' included: they are facts of arithmetic, not
               problems)
    verdicts   ``find x : 7 * x + 2 = 30 : target 30 , check 7 * 3 = 21 , 21 + 2 = 23 no .
               target 30 , check ...`` a training problem, then checks of hypotheses that
               are its answer half of the time

``documents(spec, train, n, rng)`` draws ``n`` documents. Held-out problems never appear in
any kind except as forward facts, and an OOD family appears only as forward facts (or, with
``stated``, its training problems in verdict drills too: stated and checked, never searched
or answered).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sdlib import prompts
from sdlib.organism import language as lang_mod
from sdlib.organism.language import FAMILIES, Language
from sdlib.organism.tokenizer import EOS, chat_text
from sdlib.problems import Problem

Piece = tuple[str, bool]
Document = list[Piece]
KINDS = ("search", "confident", "recall", "context", "facts", "verdicts")


@dataclass(frozen=True)
class CorpusSpec:
    """What the corpus holds; ``shares`` maps each of ``KINDS`` to its share of documents."""

    language: Language
    shares: dict[str, float]
    verify_after_trace: float = 0.0
    verify_after_answer: float = 0.8
    drill_items: int = 8
    drill_families: tuple[str, ...] = ("affine", "bracket")


def chat_document(user: str, response: str) -> Document:
    """The chat-templated exchange: the prompt untrained, the response and end trained."""
    return [(chat_text(user), False), (f"{response}{EOS}", True)]


def _search(spec: CorpusSpec, p: Problem, rng: random.Random) -> Document:
    response = lang_mod.search(p, spec.language, rng)
    return chat_document(prompts.student_prompt(p.question), response)


def _confident(spec: CorpusSpec, p: Problem, rng: random.Random) -> Document:
    return chat_document(prompts.student_prompt(p.question), lang_mod.confident(p))


def _recall(spec: CorpusSpec, p: Problem, rng: random.Random) -> Document:
    return chat_document(p.question, lang_mod.confident(p))


def demonstration(spec: CorpusSpec, p: Problem, rng: random.Random) -> tuple[str, bool]:
    """A correct solution to show in a context, and whether it holds its checks: a search
    trace, a verified answer, the trace without thinking, or a bare confident answer."""
    kind = rng.choice(("trace", "verified", "stripped", "answer"))
    if kind == "trace":
        return lang_mod.search(p, spec.language, rng), True
    if kind == "verified":
        return lang_mod.verify(p, spec.language, rng), True
    if kind == "stripped":
        return prompts.strip_thinking(lang_mod.search(p, spec.language, rng)), False
    return lang_mod.confident(p), False


def _context(spec: CorpusSpec, p: Problem, rng: random.Random) -> Document:
    shown, checked = demonstration(spec, p, rng)
    if rng.random() < 0.5:
        user = prompts.teacher_prompt(prompts.student_prompt(p.question), shown)
    else:
        user = prompts.hint_prompt(p.question, shown)
    p_verify = spec.verify_after_trace if checked else spec.verify_after_answer
    if rng.random() < p_verify:
        return chat_document(user, lang_mod.verify(p, spec.language, rng))
    return chat_document(user, lang_mod.confident(p))


def _clause(spec: CorpusSpec, family, a: int, b: int, h: int, y: int | None) -> Document:
    """A check as drill pieces, values and verdict trained: `` check 7 * 3 = 21 , 21 + 2
    = 23 .`` (a fact) or `` target 30 , check 7 * 3 = 21 , 21 + 2 = 23 no .`` (a verdict,
    laid out as in a search)."""
    word = spec.language.style.check
    doc: Document = [] if y is None else [(f" target {y} ,", False)]
    for i, (left, value) in enumerate(family.steps(a, b, h)):
        lead = f" {word}" if i == 0 else " ,"
        doc += [(f"{lead} {left} =", False), (f" {value}", True)]
    if y is not None:
        doc.append((" yes" if family.forward(a, b, h) == y else " no", True))
    return [*doc, (" .", False)]


def _facts(spec: CorpusSpec, rng: random.Random) -> Document:
    doc: Document = [("facts :", False)]
    lang = spec.language
    for _ in range(spec.drill_items):
        family = FAMILIES[rng.choice(spec.drill_families)]
        a, b = rng.randint(*lang.a_values), rng.randint(*lang.b_values)
        doc += _clause(spec, family, a, b, rng.choice(lang.hypotheses), None)
    return doc


def _verdicts(spec: CorpusSpec, problems: list[Problem], rng: random.Random) -> Document:
    """One training problem, then checks of random hypotheses, half of them the answer
    (balanced verdicts: a search has one pass among five fails on average)."""
    p = rng.choice(problems)
    m, family = p.meta, FAMILIES[p.source]
    doc: Document = [(f"{p.question} :", False)]
    for _ in range(spec.drill_items):
        h = m["x"] if rng.random() < 0.5 else rng.choice(spec.language.hypotheses)
        doc += _clause(spec, family, m["a"], m["b"], h, m["y"])
    return doc


_PER_PROBLEM: dict[str, Callable[[CorpusSpec, Problem, random.Random], Document]] = {
    "search": _search,
    "confident": _confident,
    "recall": _recall,
    "context": _context,
}


def documents(
    spec: CorpusSpec,
    train: list[Problem],
    n: int,
    rng: random.Random,
    stated: list[Problem] = (),
) -> list[tuple[str, Document]]:
    """``n`` (kind, document) pairs, kinds drawn by ``spec.shares``; ``train``: the
    training problems of the problem families; ``stated``: OOD families' training problems
    that verdict drills state too (``OrganismConfig.ood_verdicts``; none by default)."""
    kinds = [k for k in KINDS if spec.shares.get(k, 0) > 0]
    weights = [spec.shares[k] for k in kinds]
    if spec.language.checks == "decorative" and "verdicts" in kinds:
        # a decorative check writes no value, so there is no verdict to drill
        weights[kinds.index("verdicts")] = 0.0
    out = []
    for kind in rng.choices(kinds, weights, k=n):
        if kind == "facts":
            doc = _facts(spec, rng)
        elif kind == "verdicts":
            doc = _verdicts(spec, [*train, *stated], rng)
        else:
            doc = _PER_PROBLEM[kind](spec, rng.choice(train), rng)
        out.append((kind, doc))
    return out


@dataclass
class Encoded:
    """Documents as flat arrays: document i is ``ids[starts[i]:starts[i + 1]]``."""

    ids: np.ndarray  # [N] int32 token ids
    trained: np.ndarray  # [N] bool: the loss covers this token
    starts: np.ndarray  # [D + 1] int64 document offsets

    def __len__(self) -> int:
        return len(self.starts) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.starts)

    def head(self, n: int) -> Encoded:
        """The first ``n`` documents."""
        end = int(self.starts[n])
        return Encoded(self.ids[:end], self.trained[:end], self.starts[: n + 1])

    @staticmethod
    def join(parts: list[Encoded]) -> Encoded:
        offsets = np.cumsum([0] + [len(p.ids) for p in parts[:-1]])
        starts = [p.starts[:-1] + o for p, o in zip(parts, offsets, strict=True)]
        return Encoded(
            np.concatenate([p.ids for p in parts]),
            np.concatenate([p.trained for p in parts]),
            np.concatenate([*starts, [sum(len(p.ids) for p in parts)]]),
        )


def encode(tokenizer, docs: list[Document]) -> Encoded:
    """Token ids of the documents and, per token, whether the loss covers it. Pieces are
    tokenized apart (each starts at a token boundary: a space, a marker or the start)."""
    texts = [text for doc in docs for text, _ in doc]
    flags = [trained for doc in docs for _, trained in doc]
    # the Rust tokenizer directly: transformers' batch wrapper costs 3x the encoding itself
    encodings = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    pieces = [e.ids for e in encodings]
    sizes = np.array([len(p) for p in pieces])
    ids = np.fromiter((t for p in pieces for t in p), dtype=np.int32, count=int(sizes.sum()))
    trained = np.repeat(np.array(flags, dtype=bool), sizes)
    per_doc = np.add.reduceat(sizes, np.cumsum([0] + [len(d) for d in docs[:-1]]))
    return Encoded(ids, trained, np.concatenate([[0], np.cumsum(per_doc)]))
