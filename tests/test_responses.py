"""sdlib.experiments.responses, .pressure and .display: which response a notebook shows,
the teacher's per-token pressure on it, and the HTML both are shown in."""

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from sdlib.behavior import epistemic_total
from sdlib.experiments import pressure, responses
from sdlib.experiments.display import Response, card, cards, coloured_tokens, epistemic_spans
from sdlib.prompts import chat, hint_prompt, student_prompt, teacher_prompt


def _samples(problems, seeds=(0, 1), k=2, text="x", drop=()):
    rows = [
        {"benchmark": "b", "problem_id": p, "seed": s, "sample": j, "text": f"{text} {p}{s}{j}"}
        for p in problems
        for s in seeds
        for j in range(k)
        if (p, s, j) not in drop
    ]
    frame = pd.DataFrame(rows)
    return frame.assign(correct=True, gold="1", pred="1", len_tokens=3)


def test_the_response_shown_is_drawn_by_seed_from_what_every_method_answered():
    problems = [f"p{i}" for i in range(20)]
    frames = {
        "base": _samples(problems, text="base"),
        "GRPO": _samples(problems, text="grpo", drop={("p3", 0, 1)}),
        "SDPO": _samples([*problems, "only-sdpo"], text="sdpo"),
    }
    first = responses.choose(frames, seed=0)
    assert responses.choose(frames, seed=0) == first  # the same seed, the same response
    drawn = {responses.choose(frames, seed=s) for s in range(50)}
    assert len(drawn) > 1  # another seed can draw another
    shared = set(responses.common_keys(frames))
    assert drawn <= shared and len(shared) == 20 * 2 * 2 - 1
    assert ("b", "p3", 0, 1) not in shared and not any(k[1] == "only-sdpo" for k in shared)
    # the order of the frames' rows does not change the draw
    shuffled = {k: f.sample(frac=1, random_state=1) for k, f in frames.items()}
    assert responses.choose(shuffled, seed=0) == first
    rows = responses.rows_at(frames, first)
    assert {r["problem_id"] for r in rows.values()} == {first[1]}  # one problem for all
    assert [r["text"].split()[0] for r in rows.values()] == ["base", "grpo", "sdpo"]


def test_side_by_side_shows_every_method_on_one_problem():
    problem = SimpleNamespace(id="p1", question="find x : 2 * x = 4", answer="2")
    frames = {m: _samples(["p1"], text=m) for m in ("base", "GRPO", "SDPO")}
    page = responses.side_by_side(frames, {"p1": problem}, seed=3)
    at = responses.choose(frames, seed=3)
    assert "find x : 2 * x = 4" in page and "gold answer: 1" in page  # the samples' gold
    for method in frames:
        assert f"{method} p1{at[2]}{at[3]}" in page  # each method's response at that key
    assert page._repr_html_() == str(page) and "characters" in repr(page)


def test_epistemic_spans_are_the_papers_count():
    texts = [
        "Wait, maybe x = 3? Checking... that seems unlikely. Hmm, hmmm.",
        "<think> target 59 . hmm , perhaps x = 1 ? check 7 * 1 = 7 no , wait . </think>",
        "no doubt at all: x = 9",
        "",
    ]
    for text in texts:
        spans = epistemic_spans(text)
        assert len(spans) == epistemic_total(text)
        assert all(text[a:b].lower() in {"wait", "maybe", "check", "seems", "likely", "hmm",
                                         "perhaps"} for a, b in spans)  # fmt: skip


def test_a_response_holding_markup_is_shown_as_text():
    hostile = '<script>alert("x")</script> wait <img src=x onerror=alert(1)> & maybe'
    html = card(Response("SDPO", hostile, correct=False, tokens=12, answer="<b>9</b>"))
    assert "<script" not in html and "<img" not in html and "<b>9" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert html.count("<mark") == 2  # wait, maybe: marked after escaping, never inside a tag
    page = cards([Response("a <i>label</i>", hostile)], heading="<h1>q</h1>", note="<u>n</u>")
    assert "<i>label" not in page and "<h1>q" not in page and "<u>n" not in page
    spans = [(0, 8), (8, 20), (20, 29), (29, 34)]
    coloured = coloured_tokens(
        hostile, spans, np.array([1.0, -1.0, 0.5, 0.0]), np.array([0, 0, 0, 1], bool), 2.0,
        describe=lambda i: '"><script>',
    )  # fmt: skip
    assert "<script" not in coloured and "&lt;script&gt;" in coloured
    assert 'title="&quot;&gt;&lt;script&gt;"' in coloured


def test_pressure_equals_a_plain_forward_of_student_and_teacher(tiny):
    model, tok = tiny.model.eval(), tiny.tokenizer
    question = "What is 2 + 3?"
    student = chat(tok, student_prompt(question))
    teachers = {
        "demonstration": chat(tok, teacher_prompt(student_prompt(question), "2 + 3 = 5.")),
        "hint": chat(tok, hint_prompt(question, "5")),
    }
    response = "Hmm, maybe 5? Wait, let me check: 2 + 3 = 5. \\boxed{5}"
    measured = pressure.measure(model, tok, student, teachers, response, "p")
    ids = tok(response, add_special_tokens=False)["input_ids"]

    def plain(prompt_text):  # log pi(y_t | prompt, y_<t) from one unbatched forward
        prompt = tok(prompt_text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + ids])).logits[0].double()
        logp = logits.log_softmax(-1)[len(prompt) - 1 : -1]
        return logp.gather(-1, torch.tensor(ids)[:, None])[:, 0].numpy()

    for label, text in teachers.items():
        got = measured[label]
        np.testing.assert_allclose(got.student, plain(student), atol=1e-4)
        np.testing.assert_allclose(got.teacher, plain(text), atol=1e-4)
        np.testing.assert_allclose(got.value, plain(text) - plain(student), atol=2e-4)
        assert len(got.value) == len(ids) and got.problem_id == "p"
    hint = measured["hint"]
    marked = [response[a:b].strip().lower() for (a, b), m in
              zip(hint.spans, hint.epistemic, strict=True) if m]  # fmt: skip
    assert "".join(marked) == "hmmmaybewaitcheck"  # every piece of the four words, no other


def _hand(problem, values, epistemic):
    v = np.array(values, dtype=np.float64)
    return pressure.TokenPressure(
        problem, "", [(i, i + 1) for i in range(len(v))], np.array(epistemic, bool),
        student=np.zeros_like(v), teacher=v,
    )  # fmt: skip


def test_epistemic_and_other_means_on_a_hand_made_case():
    made = [
        _hand("a", [1.0, 1.0, 0.0, 0.0], [1, 1, 0, 0]),  # e = 1, o = 0
        _hand("a", [3.0, -1.0, -1.0], [1, 0, 0]),  # e = 3, o = -1
        _hand("b", [0.5, 0.5], [0, 0]),  # no epistemic token: o = 0.5 only
    ]
    table = pressure.summary({"ctx": made}, n_boot=500).loc["ctx"]
    epi, other, paired = (table.loc[k] for k in ("epistemic tokens", "other tokens",
                                                  "epistemic - other"))  # fmt: skip
    assert epi["pressure"] == pytest.approx(2.0)
    assert (epi["responses"], epi["problems"], epi["tokens"]) == (2, 1, 3)
    assert other["pressure"] == pytest.approx((0.0 - 1.0 + 0.5) / 3)
    assert (other["responses"], other["problems"], other["tokens"]) == (3, 2, 6)
    assert paired["pressure"] == pytest.approx(((1 - 0) + (3 - -1)) / 2)  # paired per response
    assert (paired["responses"], paired["problems"], paired["tokens"]) == (2, 1, 7)
    for row, (low, high) in ((epi, (1, 3)), (other, (-1, 0.5)), (paired, (1, 4))):
        assert low <= row["pressure_lo"] <= row["pressure"] <= row["pressure_hi"] <= high
    assert epi["pressure_lo"] < epi["pressure_hi"]  # two different responses: a spread
    flat = pressure.summary({"c": [_hand("a", [2.0, 0.0], [1, 0])] * 3}, n_boot=200).loc["c"]
    assert flat.loc["epistemic - other", ["pressure_lo", "pressure_hi"]].tolist() == [2.0, 2.0]
    none = pressure.summary({"c": [made[2]]}, n_boot=50).loc["c"].loc["epistemic tokens"]
    assert math.isnan(none["pressure"]) and none["responses"] == 0


def test_demonstrations_are_chosen_as_sdpo_chooses_them():
    frame = pd.DataFrame(
        {
            "benchmark": "b",
            "problem_id": ["p", "p", "p", "q", "q"],
            "seed": 0,
            "sample": [0, 1, 2, 0, 1],
            "correct": [False, True, True, False, False],
            "text": ["<think> a </think> w0", "<think> b </think> c1", "c2", "w3", "w4"],
        }
    )
    knobs = SimpleNamespace(
        success_threshold=0.5, dont_reprompt_on_self_success=True, strip_demo_thinking=False
    )
    chosen = pressure.with_demonstrations(frame.iloc[::-1], knobs)["demonstration"]
    demos = [d if isinstance(d, str) else None for d in chosen]
    assert demos == ["<think> b </think> c1", "c2", "<think> b </think> c1", None, None]
    stripped = pressure.with_demonstrations(frame, SimpleNamespace(**{**vars(knobs),
                                            "strip_demo_thinking": True}))  # fmt: skip
    assert stripped["demonstration"].tolist()[0] == "c1"


def test_the_responses_measured_are_a_seeded_draw():
    frame = _samples([f"p{i}" for i in range(10)])
    one = pressure.draw(frame, 5, seed=0)
    assert one.equals(pressure.draw(frame.sample(frac=1, random_state=2), 5, seed=0))
    assert not one.equals(pressure.draw(frame, 5, seed=1))
    assert len(pressure.draw(frame, 500, seed=0)) == len(frame)


def test_the_view_colours_one_response_and_holds_the_table():
    text = "<b>hmm</b> x = 9"
    spans = [(0, 3), (3, 6), (6, 10), (10, 12), (12, 14), (14, 16)]
    made = pressure.TokenPressure(
        "p", text, spans, pressure.epistemic_tokens(text, spans),
        student=np.zeros(6), teacher=np.array([0.0, -3.0, 0.0, 0.5, 0.0, 1.0]),
    )  # fmt: skip
    assert made.epistemic.tolist() == [False, True, False, False, False, False]
    shown = pressure.view([{"full solution": made}], "a <heading>", "a <note>")
    page = shown._repr_html_()
    assert "<b>" not in page and "&lt;b&gt;" in page and "&lt;heading&gt;" in page
    assert "rgba(178,24,43,0.750)" in page  # -3 nats: the strongest red (scale 2 nats)
    assert shown.table.loc[("full solution", "epistemic tokens"), "pressure"] == -3.0
    assert repr(shown).startswith("<PressureView (full solution: 1 responses)")
