"""The premise gate: does checking pay in this organism? Measured on held-out problems.

Modes, one sampled response per problem (temperature ``temperature``, seeded):

    search  the assistant turn prefilled with ``<think>``: the model must search
    direct  prefilled with ``x =``, the confident mode's opening: one step, no check
    free    no prefill: the model picks its mode (what sdlib's evaluation sees)

Figures (``premise.json``): per family, accuracy of each mode and the paired difference
search - direct with a 95% bootstrap interval over problems (``BOOT`` resamples, fixed
seed); over the search responses, the share of checks whose value, target and verdict
are right (verdict: yes exactly when the written value equals the written target) and
the share of responses the independent checker passes whole; in free mode, epistemic
words (the paper's substring count) and tokens per response; with a correct solution in
the teacher's context (a full search trace, or the bare answer), accuracy, tokens and
epistemic words; direct accuracy on training problems (their answers are in the corpus).

The organism passes when, for every gated family, the gain is at least ``min_gain`` and
its interval excludes 0, and, for every unseen family (never stated as a problem: an
``ood_families`` entry), the gain's interval is above 0: search still pays where no problem
of the kind was ever seen. ``RULES`` versions this rule; a build's verdict is derived again
from its stored figures when the rule changes (``verdict``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from sdlib import prompts
from sdlib.behavior import behavior_row
from sdlib.grading import grade_response
from sdlib.organism import checker
from sdlib.organism import language as lang_mod
from sdlib.organism.tokenizer import chat_text
from sdlib.problems import Problem
from sdlib.progress import tqdm
from sdlib.rollout import Sampling, TransformersBackend

BOOT = 2000
RULES = 2  # the pass rule's version: 2 added the unseen families
PREFILL = {"search": prompts.THINK_OPEN, "direct": "x =", "free": ""}


@dataclass(frozen=True)
class GateSpec:
    """How the gate samples and what it requires."""

    problems: int = 200  # held-out problems per family (at most the held-out split)
    temperature: float = 1.0
    max_new_tokens: int = 320
    min_gain: float = 0.5
    seed: int = 0
    batch: int = 512  # rows decoded together: per-step overhead dominates at this size


def generate(model, tokenizer, texts: list[str], spec: GateSpec) -> list[str]:
    """One sampled continuation of each chat-rendered text, special tokens dropped:
    sdlib's own decode loop (``rollout.TransformersBackend``), text i seeded by
    (``spec.seed``, i), at ``spec.temperature`` (0 = greedy) from the full distribution."""
    backend = TransformersBackend(model, tokenizer, spec.batch, progress=False)
    sampling = Sampling(spec.max_new_tokens, spec.temperature, seed=spec.seed)
    out: list[str] = []
    for lo in tqdm(range(0, len(texts), spec.batch), desc="premise gate", unit="batch"):
        chunk = texts[lo : lo + spec.batch]
        out += backend.generate(chunk, 1, sampling, keys=list(range(lo, lo + len(chunk)))).text
    return out


def respond(model, tokenizer, users: list[str], mode: str, spec: GateSpec) -> list[str]:
    """Responses to user turns in one mode; the prefill is part of the returned text."""
    prefill = PREFILL[mode]
    texts = [chat_text(u, prefill) for u in users]
    return [prefill + r for r in generate(model, tokenizer, texts, spec)]


def paired_interval(diff: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of mean(diff) over problems."""
    rng = np.random.default_rng(seed)
    means = rng.choice(diff, size=(BOOT, len(diff)), replace=True).mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return round(float(lo), 4), round(float(hi), 4)


def _correct(texts: list[str], problems: list[Problem]) -> np.ndarray:
    return np.array(
        [grade_response(t, p.answer).correct for t, p in zip(texts, problems, strict=True)], float
    )


def _style(texts: list[str], tokenizer) -> dict:
    rows = [behavior_row(t, tokenizer) for t in texts]
    return {
        "epistemic": round(float(np.mean([r["epi_total"] for r in rows])), 3),
        "tokens": round(float(np.mean([r["len_tokens"] for r in rows])), 2),
        "search_share": round(float(np.mean([t.startswith(prompts.THINK_OPEN) for t in texts])), 3),
    }


def _checks(texts: list[str], problems: list[Problem], space: tuple[int, int]) -> dict:
    totals = {"steps": 0, "values_right": 0, "targets_right": 0, "verdicts_right": 0}
    valid = 0
    for t, p in zip(texts, problems, strict=True):
        for k, v in checker.step_stats(p, t).items():
            totals[k] += v
        valid += not checker.check_trace(p, t, space)
    n = max(1, totals["steps"])
    return {
        "steps_per_response": round(totals["steps"] / max(1, len(texts)), 2),
        "value_accuracy": round(totals["values_right"] / n, 4),
        "target_accuracy": round(totals["targets_right"] / n, 4),
        "verdict_accuracy": round(totals["verdicts_right"] / n, 4),
        "valid_traces": round(valid / max(1, len(texts)), 4),
    }


def family_figures(model, tokenizer, problems: list[Problem], lang, spec: GateSpec) -> dict:
    """Search, direct and free accuracy on ``problems``, the paired gain, checks, style."""
    users = [prompts.student_prompt(p.question) for p in problems]
    texts = {m: respond(model, tokenizer, users, m, spec) for m in PREFILL}
    right = {m: _correct(texts[m], problems) for m in PREFILL}
    gain = right["search"] - right["direct"]
    return {
        "n": len(problems),
        **{m: round(float(right[m].mean()), 4) for m in PREFILL},
        "gain": round(float(gain.mean()), 4),
        "gain_ci": paired_interval(gain, spec.seed),
        "checks": _checks(texts["search"], problems, lang.x_values),
        "free_style": _style(texts["free"], tokenizer),
        "samples": {m: texts[m][0] for m in PREFILL},
    }


def context_figures(model, tokenizer, problems: list[Problem], lang, spec: GateSpec) -> dict:
    """Free-mode responses to the teacher reprompt holding a correct full search trace
    (``trace``) or only its final answer (``answer``)."""
    rng = random.Random(spec.seed)
    out = {}
    for kind in ("trace", "answer"):
        demos = [lang_mod.search(p, lang, rng) for p in problems]
        if kind == "answer":
            demos = [prompts.strip_thinking(d) for d in demos]
        users = [
            prompts.teacher_prompt(prompts.student_prompt(p.question), d)
            for p, d in zip(problems, demos, strict=True)
        ]
        texts = respond(model, tokenizer, users, "free", spec)
        out[kind] = {"accuracy": round(float(_correct(texts, problems).mean()), 4)}
        out[kind] |= _style(texts, tokenizer)
    return out


def run_gate(
    model, tokenizer, splits: dict, lang, spec: GateSpec, gated: list[str], unseen=()
) -> dict:
    """Every gate figure; ``splits``: family -> {"train", "heldout"} problem lists;
    ``gated``: the families that must pass; ``unseen``: the OOD families."""
    figures: dict = {"families": {}, "spec": spec.__dict__}
    for name, split in splits.items():
        held = split["heldout"][: spec.problems]
        figures["families"][name] = family_figures(model, tokenizer, held, lang, spec)
    first = next(iter(gated))
    held = splits[first]["heldout"][: spec.problems]
    figures["context"] = context_figures(model, tokenizer, held, lang, spec)
    train = splits[first]["train"][: spec.problems]
    users = [prompts.student_prompt(p.question) for p in train]
    direct = respond(model, tokenizer, users, "direct", spec)
    figures["direct_train"] = round(float(_correct(direct, train).mean()), 4)
    return figures | verdict(figures, gated, unseen, spec)


def verdict(figures: dict, gated: list[str], unseen, spec: GateSpec) -> dict:
    """``reasons`` (``failures``), ``passed`` and the ``rules`` they were derived under."""
    reasons = failures(figures, gated, spec, unseen)
    return {"reasons": reasons, "passed": not reasons, "rules": RULES}


def failures(figures: dict, gated: list[str], spec: GateSpec, unseen=()) -> list[str]:
    """Why the organism fails its premise, one line per failing family (empty: it passes)."""
    out = []
    for name in [*gated, *unseen]:
        f = figures["families"][name]
        lo = f["gain_ci"][0]
        least = 0.0 if name in unseen else spec.min_gain
        if f["gain"] < least or lo <= 0:
            kind = "an unseen family: " if name in unseen else ""
            out.append(
                f"{name}: search - direct = {f['gain']:+.3f} [{lo:+.3f}, {f['gain_ci'][1]:+.3f}]"
                f" (search {f['search']:.3f}, direct {f['direct']:.3f}); {kind}needs >= "
                f"{least:+.2f} with the interval above 0 (verdicts right "
                f"{f['checks']['verdict_accuracy']:.2f}, values right "
                f"{f['checks']['value_accuracy']:.2f})"
            )
    return out
