"""Notebook 06's pieces: the variants' defining properties, their specs, the paired
difference in differences against a float64 brute force, and the verdict rule."""

import random
import re

import numpy as np
import pandas as pd
import pytest

from sdlib import stats
from sdlib.behavior import epistemic_total
from sdlib.config import ConfigError, MechanismConfig, from_dict
from sdlib.experiments import mechanism
from sdlib.organism import build, corpus
from sdlib.organism.config import variant, variant_spec


def _documents(name: str, n: int = 600) -> list[tuple[str, str]]:
    cfg = variant(name)
    parts = build.splits(cfg)
    train = [p for f in cfg.families for p in parts[f]["train"]]
    drawn = corpus.documents(cfg.corpus(), train, n, random.Random(0))
    return [(kind, "".join(t for t, _ in doc)) for kind, doc in drawn]


def _reply(text: str) -> str:
    return text.split("<|assistant|>", 1)[1]


def test_silent_corpus_holds_no_epistemic_word():
    docs = _documents("silent")
    assert {k for k, _ in docs} >= {"search", "context", "facts", "verdicts"}
    assert sum(epistemic_total(t) for _, t in docs) == 0
    assert sum(epistemic_total(t) for _, t in _documents("organism")) > 0  # the default's


def test_decorative_checks_compute_no_value():
    checks = [
        clause
        for kind, text in _documents("decorative")
        if kind in ("search", "context")
        for clause in re.findall(r"check ([^,.]*?) (?:yes|no)", _reply(text))
    ]
    assert len(checks) > 50
    assert not [c for c in checks if "=" in c]  # "check 9 * 3 + 5 no": the bare expression
    default = [
        c
        for kind, text in _documents("organism")
        if kind == "search"
        for c in re.findall(r"check ([^.]*?) (?:yes|no)", _reply(text))
    ]
    assert all("=" in c for c in default)


def _context_replies(name: str) -> list[tuple[bool, str]]:
    """(the demonstration in context holds a full trace, the reply) of context documents."""
    out = []
    for kind, text in _documents(name, 1500):
        if kind == "context":
            user, reply = text.split("<|assistant|>", 1)
            out.append(("<think>" in user, reply))
    return out


def test_the_checking_teacher_verifies_after_a_full_trace_and_the_default_does_not():
    checking, default = _context_replies("checking"), _context_replies("organism")
    traced = [r for full, r in checking if full]
    assert len(traced) > 20
    assert all(r.startswith("<think>") and " check " in r for r in traced)
    assert not [r for full, r in default if full and r.startswith("<think>")]


def test_an_unseen_family_appears_only_as_forward_facts():
    cfg = variant("unseen")
    mirror = build.splits(cfg)["mirror"]
    docs = _documents("unseen", 3000)
    text = "\n".join(t for _, t in docs)
    # its forward facts are drilled: `check 3 + 2 = 5 , 5 * 7 = 35` (the product reversed)
    assert re.search(r"check \d+ \+ \d+ = (\d+) , \1 \* \d+ =", text)
    # but no problem of it is ever stated, in a chat, a context or a verdict drill
    assert ": ( x +" not in text  # mirror states "find x : ( x + 2 ) * 7 = 35"
    assert not [p for p in mirror["train"] + mirror["heldout"] if p.question in text]
    # and "all" trains on the problem families only
    from sdlib.datasets import load_problems

    trained = load_problems("organism:all:train:100000:unseen").problems
    assert trained and {p.source for p in trained} == {"affine", "bracket"}
    assert load_problems("organism:mirror:heldout:5:unseen").problems[0].source == "mirror"


def test_a_stated_unseen_family_appears_in_verdict_drills_only():
    cfg = variant("unseen_stated")
    parts = build.splits(cfg)
    train = [p for f in cfg.families for p in parts[f]["train"]]
    stated = parts["mirror"]["train"]
    drawn = corpus.documents(cfg.corpus(), train, 3000, random.Random(0), stated)
    texts = {kind: [] for kind in corpus.KINDS}
    for kind, doc in drawn:
        texts[kind].append("".join(t for t, _ in doc))
    assert any(t.startswith("find x : ( x +") for t in texts["verdicts"])
    chats = [t for kind in ("search", "confident", "recall", "context") for t in texts[kind]]
    assert chats and not [t for t in chats if ": ( x +" in t]
    held = {p.question for p in parts["mirror"]["heldout"]}
    assert not [t for t in texts["verdicts"] if t.split(" : target")[0] in held]


def test_variants_compose_and_take_the_models_scale():
    cfg = variant("silent+smoke")
    assert (cfg.verbalize, cfg.hidden, cfg.gate) == (False, 32, "skip")
    assert variant("checking").verify_after_trace == 1.0
    assert variant("checking").key() != variant("organism").key()
    assert variant_spec("organism", "silent") == "organism:silent"
    assert variant_spec("organism:smoke", "silent") == "organism:silent+smoke"
    with pytest.raises(ConfigError, match="no organism variant 'loud'"):
        variant("silent+loud")


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"variants": ["silent", "silent"]}, "variants = "),
        ({"variants": ["smoke"]}, "variants = "),
        ({"variants": []}, "variants = "),
        ({"model": "bundled:SmolLM2-135M-Instruct"}, "needs an organism"),
    ],
)
def test_mechanism_config_refuses_what_it_cannot_run(values, fragment):
    with pytest.raises(ConfigError, match=fragment):
        from_dict(MechanismConfig, values)


def _samples(rng, seeds=2, problems=3, k=2, shift=0.0):
    rows = []
    for s in range(seeds):
        for bench in ("a", "b"):
            for p in range(problems):
                for j in range(k):
                    rows.append({
                        "seed": s, "benchmark": bench, "problem_id": f"p{p}", "sample": j,
                        "correct": bool(rng.random() < 0.5 + shift),
                        "len_tokens": float(rng.integers(10, 100)),
                        "epi_total": float(rng.integers(0, 9)),
                    })  # fmt: skip
    return pd.DataFrame(rows)


def test_difference_in_differences_equals_a_float64_brute_force():
    rng = np.random.default_rng(0)
    finals = {
        o: {"GRPO": _samples(rng), "SDPO": _samples(rng, shift=s)}
        for o, s in (("default", -0.3), ("silent", 0.0))
    }
    versus = mechanism.versus_default(finals)
    effect = mechanism.effects(finals)
    for measure, column in mechanism.MEASURES.items():

        def values(o, algo, column=column):
            frame = finals[o][algo].sort_values(["seed", "benchmark", "problem_id", "sample"])
            return frame[column].to_numpy(np.float64)

        did = (values("silent", "SDPO") - values("silent", "GRPO")) - (
            values("default", "SDPO") - values("default", "GRPO")
        )
        row = versus.loc[("silent", measure)]
        assert row["ΔΔ"] == pytest.approx(did.mean(), abs=1e-12)
        assert row["ΔΔ_lo"] <= row["ΔΔ"] <= row["ΔΔ_hi"]
        assert (row["seeds"], row["problems"], row["samples"]) == (2, 6, 24)
        diff = values("default", "SDPO") - values("default", "GRPO")
        pooled = effect.loc[("default", mechanism.POOLED)]
        assert pooled[f"Δ{measure}"] == pytest.approx(diff.mean(), abs=1e-12)
        assert pooled[f"SDPO {measure}"] == pytest.approx(values("default", "SDPO").mean())


@pytest.mark.parametrize(
    "expected, low, high, verdict",
    [
        ("falls", -0.3, -0.1, "agrees"),
        ("falls", -0.3, 0.1, "undecided (within noise)"),
        ("falls", 0.1, 0.3, "disagrees"),
        ("holds", -0.3, 0.1, "agrees"),
        ("holds", 0.1, 0.3, "agrees"),
        ("holds", -0.3, -0.1, "disagrees"),
        ("smaller", 0.1, 0.3, "agrees"),
        ("smaller", -0.1, 0.3, "undecided (within noise)"),
        ("smaller", -0.3, -0.1, "disagrees"),
    ],
)
def test_a_verdict_follows_the_interval(expected, low, high, verdict):
    est = stats.Estimate((low + high) / 2, low, high, 3, 100, 600)
    assert mechanism.judge(expected, est) == verdict


def test_every_prediction_names_a_measure_and_a_known_expectation():
    for variant_name, predictions in mechanism.PREDICTIONS.items():
        variant(variant_name)  # a registered variant
        for _, measure, table, expected in predictions:
            assert measure in mechanism.MEASURES
            assert table in ("effects", "versus") and expected in ("falls", "holds", "smaller")
