"""The model organism: its language, checker, tokenizer, corpus, build cache and gate."""

import json
import random

import pytest

from sdlib import prompts
from sdlib.behavior import epistemic_total
from sdlib.grading import grade_response
from sdlib.organism import checker, corpus, language
from sdlib.organism.build import PremiseError, build, make_corpus, read_premise, splits
from sdlib.organism.config import VARIANTS, OrganismConfig, variant
from sdlib.organism.language import FAMILIES, Language
from sdlib.organism.tokenizer import EOS, build_tokenizer, chat_text
from sdlib.schema import ConfigError

LANGUAGES = {
    "default": Language(),
    "silent": Language(verbalize=False),
    "slips": Language(slip_rate=0.5),
    "decorative": Language(checks="decorative"),
}


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def smoke_corpus(tok):
    cfg = variant("smoke")
    return cfg, make_corpus(cfg, tok)


def _responses(lang, rng):
    for family in FAMILIES.values():
        for p in language.all_problems(family, lang):
            for text in (language.search(p, lang, rng), language.verify(p, lang, rng)):
                yield p, text
            yield p, language.confident(p)


@pytest.mark.parametrize("name", LANGUAGES)
def test_every_generated_response_passes_the_independent_checker(name):
    lang, rng = LANGUAGES[name], random.Random(0)
    bad = [(p.id, t, e) for p, t in _responses(lang, rng) if (e := checker.check_trace(p, t))]
    assert not bad, bad[:3]


def test_checker_catches_corrupted_traces():
    p = language.make_problem(FAMILIES["affine"], 7, 2, 4)
    good = language.search(p, Language(), random.Random(0), start=2)
    assert checker.check_trace(p, good) == []
    step2 = "x = 3 ? target 30 , check 7 * 3 = 21 , 21 + 2 = 23 no"
    assert step2 in good
    corrupt = {
        "wrong verdict": good.replace("= 23 no", "= 23 yes"),
        "wrong sum": good.replace("21 + 2 = 23", "21 + 2 = 24"),
        "wrong product": good.replace("7 * 3 = 21 , 21 + 2 = 23", "7 * 3 = 24 , 24 + 2 = 26"),
        "wrong target": good.replace("target 30 , check 7 * 3", "target 31 , check 7 * 3"),
        "missing target": good.replace("target 30 , check 7 * 3", "check 7 * 3"),
        "skipped hypothesis": good.replace(
            step2, "x = 5 ? target 30 , check 7 * 5 = 35 , 35 + 2 = 37 no"
        ),
        "not the question's steps": good.replace("21 + 2 = 23", "21 + 1 = 22"),
        "unredone slip": good.replace("21 + 2 = 23", "21 + 2 = 24 . wait , actually 21 + 3 = 24"),
        "wrong answer": good.replace("\\boxed{4}", "\\boxed{5}"),
        "unclosed think": good.replace(" </think>", ""),
        "stray words": good.replace("</think>", "banana </think>"),
        "no target line": good.replace("<think> target 30 .", "<think>"),
        "stops early": good.split(" x = 3 ?")[0] + " </think> so x = 4 . \\boxed{4}",
    }
    for what, text in corrupt.items():
        assert text != good, what
        assert checker.check_trace(p, text), what
    assert checker.check_trace(p, "x = 5 . \\boxed{5}")


def test_silent_organism_writes_no_epistemic_word_and_default_uses_all_ten():
    rng = random.Random(0)
    p = language.make_problem(FAMILIES["bracket"], 3, 1, 6)
    silent = [language.search(p, LANGUAGES["silent"], rng) for _ in range(50)]
    assert all(epistemic_total(t) == 0 for t in silent)
    hedged = " ".join(language.search(p, Language(), rng) for _ in range(200))
    from sdlib.behavior import epistemic_counts

    assert all(n > 0 for n in epistemic_counts(hedged, "word").values())


def test_splits_are_seeded_disjoint_and_held_out_problems_stay_out_of_the_corpus(smoke_corpus, tok):
    cfg, (data, _) = smoke_corpus
    parts = splits(cfg)
    again = splits(cfg)
    for name, split in parts.items():
        train, held = {p.id for p in split["train"]}, {p.id for p in split["heldout"]}
        assert not train & held and len(held) == cfg.heldout
        assert [p.id for p in again[name]["heldout"]] == [p.id for p in split["heldout"]]
    text = tok.decode(data.ids.tolist())
    for split in parts.values():
        for p in split["heldout"]:
            assert p.question not in text, p.question
        assert any(p.question in text for p in split["train"])


def test_tokenizer_round_trips_the_whole_smoke_corpus(smoke_corpus, tok):
    cfg, (data, per_kind) = smoke_corpus
    assert set(per_kind) == set(corpus.KINDS)
    assert tok.unk_token_id not in set(data.ids.tolist())
    rng = random.Random(1)
    docs = [doc for _, doc in corpus.documents(cfg.corpus(), _train(cfg), 300, rng)]
    encoded = corpus.encode(tok, docs)
    for i, doc in enumerate(docs):
        text = "".join(piece for piece, _ in doc)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        # pieces tokenized apart give the same tokens as the whole text
        assert ids == encoded.ids[encoded.starts[i] : encoded.starts[i + 1]].tolist()
        assert tok.decode(ids) == text


def _train(cfg):
    parts = splits(cfg)
    return [p for n in cfg.families for p in parts[n]["train"]]


def test_tokenizer_chat_template_and_hf_round_trip(tok, tmp_path):
    from transformers import AutoTokenizer

    p = language.make_problem(FAMILIES["affine"], 7, 2, 4)
    user = prompts.student_prompt(p.question)
    assert prompts.chat(tok, user) == chat_text(user)
    shot = prompts.chat(tok, user, few_shot=True)
    assert shot.count("<|user|>") == 2 and shot.endswith("<|assistant|>")
    response = language.search(p, Language(), random.Random(0))
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again.padding_side == "left" and again.eos_token == EOS
    assert again.pad_token_id is not None and again.pad_token_id != again.eos_token_id
    ids = again(chat_text(user, response) + EOS, add_special_tokens=False)["input_ids"]
    assert ids == tok(chat_text(user, response) + EOS, add_special_tokens=False)["input_ids"]
    start = len(again(chat_text(user), add_special_tokens=False)["input_ids"])
    (text,) = again.batch_decode([ids[start:]], skip_special_tokens=True)
    assert text == response  # <think> survives skip_special_tokens; the end token does not
    assert grade_response(text, p.answer).correct
    assert not grade_response(prompts.strip_thinking(text).replace("4", "5"), p.answer).correct


def test_config_rejects_bad_values_and_keys_ignore_the_name():
    with pytest.raises(ConfigError, match="families"):
        variant(families=["cubic"])
    with pytest.raises(ConfigError, match="a_values"):
        variant(a_values=[2, 19])
    with pytest.raises(ConfigError, match="gate"):
        variant(gate="maybe")
    assert variant("organism").key() == OrganismConfig(name="other").key()
    assert variant("silent").key() != variant("organism").key()
    for name in VARIANTS:
        variant(name)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SDLIB_CACHE", str(tmp_path))
    return tmp_path


def test_smoke_build_is_deterministic_and_cached(cache, monkeypatch):
    first = build("organism:smoke", progress=False)
    digest = read_premise(first)["build"]["weights_sha256"]
    assert (first / "model.safetensors").exists() and (first / "tokenizer.json").exists()
    import sdlib.organism.build as build_mod

    def no_training(*args, **kwargs):
        raise AssertionError("a cached organism was built again")

    monkeypatch.setattr(build_mod, "pretrain", no_training)
    assert build("organism:smoke", progress=False) == first
    monkeypatch.undo()
    monkeypatch.setenv("SDLIB_CACHE", str(cache / "again"))
    second = build("organism:smoke", progress=False)
    assert second != first
    assert read_premise(second)["build"]["weights_sha256"] == digest


def test_smoke_organism_loads_through_the_model_spec_and_generates(cache):
    from sdlib.models import load_policy

    policy = load_policy("organism:smoke")
    tok = policy.tokenizer
    text = prompts.chat(tok, prompts.student_prompt("find x : 3 * x + 1 = 7"))
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = policy.model.generate(ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids.shape[1]
    assert (
        tok.padding_side == "left"
        and policy.model.generation_config.eos_token_id == tok.eos_token_id
    )


def test_gate_refuses_an_organism_in_which_checking_does_not_pay(cache):
    # the smoke model is far too small to search, so a required gate must refuse it
    strict = variant("smoke", gate="require", gate_problems=6, gate_max_new_tokens=24)
    with pytest.raises(PremiseError, match="search - direct"):
        build(strict, progress=False)
    premise = read_premise(cache / "organism" / strict.key())
    assert premise["gate"]["passed"] is False
    with pytest.raises(PremiseError):  # the verdict is cached, not recomputed
        build(strict, progress=False)


def test_problems_are_sdlib_records_of_one_split():
    from sdlib.organism import problems

    held = problems("organism:smoke", "heldout")
    train = problems("organism:smoke", "train", families=["affine"])
    assert len(held) == 2 * variant("smoke").heldout
    assert {p.source for p in train} == {"affine"} and not {p.id for p in held} & {
        p.id for p in train
    }
    p = held[0]
    assert p.meta["split"] == "heldout" and p.answer == str(p.meta["x"])
    with pytest.raises(ValueError, match="split"):
        problems("organism:smoke", "test")


def _smoke_batches(smoke_corpus, tok, count):
    from sdlib.organism import pretrain as P

    cfg, (data, _) = smoke_corpus
    batches = P.make_batches(data.lengths(), 1024, random.Random(0))[:count]
    return [P.collate(data, rows, tok.pad_token_id) for rows in batches]


def test_pretraining_loss_and_gradients_equal_transformers_forward_in_float64(smoke_corpus, tok):
    """The lean forward's loss against an independent one: transformers' eager forward, the head
    on the trained targets only, log-softmax and a mean, all in float64."""
    import torch

    from sdlib.organism import pretrain as P
    from sdlib.organism.build import new_model

    model = new_model(variant("smoke"), tok).double()
    model.config._attn_implementation = "eager"  # its CPU sdpa kernel is not exact in float64
    for inputs, targets in _smoke_batches(smoke_corpus, tok, 2):
        grads = []
        for lean in (True, False):
            model.zero_grad()
            if lean:
                loss = P.loss_on(model, inputs, targets, bf16=False)
            else:
                keep = targets != P.IGNORE
                hidden = model.model(input_ids=inputs).last_hidden_state[keep]
                logp = torch.log_softmax(model.lm_head(hidden), dim=-1)
                loss = -logp.gather(1, targets[keep][:, None]).mean()
            loss.backward()
            grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
        (got, got_g), (ref, ref_g) = grads
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
        for name in ref_g:
            torch.testing.assert_close(got_g[name], ref_g[name], rtol=1e-10, atol=1e-12)


def test_compiled_pretraining_equals_eager_and_repeats_to_the_bit(smoke_corpus, tok):
    """torch.compile's step against the eager one (fp32, to float32 rounding), and two
    compiled runs from one seed to the same weight hash (the build's determinism)."""
    import dataclasses

    import torch

    from sdlib.organism import pretrain as P
    from sdlib.organism.build import new_model, weights_hash

    cfg = variant("smoke")
    batches = _smoke_batches(smoke_corpus, tok, 6)
    schedule = dataclasses.replace(cfg.schedule(), bf16=False, warmup=2)
    runs = {}
    for name, compiled in (("eager", False), ("compiled", True), ("again", True)):
        model = new_model(cfg, tok)
        step = P.Stepper(model, dataclasses.replace(schedule, compile=compiled))
        losses = [step(i, len(batches), *b) for i, b in enumerate(batches)]
        runs[name] = losses, weights_hash(model), model.state_dict()
    (eager, _, ew), (comp, h1, cw), (_, h2, _) = runs["eager"], runs["compiled"], runs["again"]
    assert h1 == h2
    torch.testing.assert_close(torch.tensor(comp), torch.tensor(eager), rtol=1e-4, atol=1e-5)
    for name in ew:
        torch.testing.assert_close(cw[name], ew[name], rtol=1e-3, atol=1e-4, msg=name)


def test_a_non_finite_loss_stops_pretraining_naming_the_step(smoke_corpus, tok):
    import dataclasses

    from sdlib.organism import pretrain as P
    from sdlib.organism.build import new_model

    cfg, (data, _) = smoke_corpus
    schedule = dataclasses.replace(cfg.schedule(), lr=1e30, warmup=1)
    with pytest.raises(P.NonFiniteLoss, match=r"pretraining step \d+: loss is (nan|inf)"):
        P.pretrain(new_model(cfg, tok), data, tok.pad_token_id, schedule, progress=False)


def test_a_compiled_build_without_a_compiler_is_refused_before_any_work(cache, monkeypatch):
    import sdlib.organism.build as build_mod

    monkeypatch.setenv("PATH", str(cache))  # no g++ or clang++ on it
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(build_mod, "make_corpus", lambda *a: pytest.fail("work was started"))
    with pytest.raises(RuntimeError, match="C\\+\\+ compiler.*compile: false"):
        build(variant("smoke", compile=True), progress=False)


def _flip_byte(path, at):
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_damaged_organism_is_refused_in_one_line_before_use(cache):
    import json

    from sdlib.organism.build import OrganismDamaged

    folder = build("organism:smoke", progress=False)
    weights = folder / "model.safetensors"
    intact = weights.read_bytes()
    _flip_byte(weights, len(intact) - 5)  # a weight's last byte: the file still loads
    with pytest.raises(OrganismDamaged, match="not the build's weights.*delete"):
        build("organism:smoke", progress=False)
    weights.write_bytes(intact[: len(intact) // 2])  # cut short
    with pytest.raises(OrganismDamaged, match="cannot be read.*delete") as err:
        build("organism:smoke", progress=False)
    assert "\n" not in str(err.value)
    weights.write_bytes(intact)
    premise = json.loads((folder / "premise.json").read_text())
    premise["gate"]["passed"] = "yes"
    (folder / "premise.json").write_text(json.dumps(premise))
    with pytest.raises(OrganismDamaged, match="gate.passed = 'yes'"):
        build("organism:smoke", progress=False)


def test_an_organism_that_lost_its_record_is_built_again_and_stale_temporaries_go(cache):
    first = build("organism:smoke", progress=False)
    digest = read_premise(first)["build"]["weights_sha256"]
    (first / "premise.json").unlink()
    abandoned = first.with_name(f"{first.name}.tmp999999999")  # no such process
    abandoned.mkdir()
    assert build("organism:smoke", progress=False) == first
    assert read_premise(first)["build"]["weights_sha256"] == digest
    assert not abandoned.exists()


def _family(gain: float, ci: tuple[float, float]) -> dict:
    checks = {"verdict_accuracy": 0.9, "value_accuracy": 0.9}
    return {"gain": gain, "gain_ci": list(ci), "search": 0.5, "direct": 0.5, "checks": checks}


def test_an_unseen_family_must_show_search_paying_and_old_verdicts_are_derived_again(tmp_path):
    from sdlib.organism import build as build_mod
    from sdlib.organism import gate

    cfg = variant("smoke", families=["affine"], ood_families=["mirror"], gate="require")
    # a build judged under the first rule (no "rules"), which never looked at mirror
    figures = {"families": {"affine": _family(0.7, (0.6, 0.8))}, "passed": True, "reasons": []}
    figures["families"]["mirror"] = _family(0.1, (-0.05, 0.2))
    premise = {"gate": figures, "build": {"weights_sha256": "0"}}
    (tmp_path / "premise.json").write_text(json.dumps(premise))
    got = build_mod._current_verdict(cfg, premise, tmp_path)["gate"]
    assert got["passed"] is False and got["rules"] == gate.RULES
    (reason,) = got["reasons"]
    assert reason.startswith("mirror: search - direct = +0.100 [-0.050, +0.200]")
    assert "an unseen family: needs >= +0.00" in reason
    assert read_premise(tmp_path)["gate"]["passed"] is False  # written back
    # search pays on mirror, if by less than the trained families' least gain: it passes
    figures["families"]["mirror"] = _family(0.2, (0.1, 0.3))
    assert gate.failures(figures, ["affine"], cfg.gate_spec(), ["mirror"]) == []
    assert gate.failures(figures, ["affine", "mirror"], cfg.gate_spec()) != []


def test_a_gpu_build_on_a_machine_without_one_is_refused_before_any_work(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("SDLIB_CACHE", str(tmp_path))
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="no CUDA"):
        build(variant("smoke", device="cuda"))
    assert not any(tmp_path.rglob("*.tmp*"))  # nothing started
    # the default organism's key is the one it had before the field existed
    assert variant("organism").key() == variant("organism", device="cpu").key()
    assert variant("gpu").key() != variant("organism").key()
