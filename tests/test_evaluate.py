import itertools
import json
import math

import pandas as pd
import pytest

from sdlib.behavior import EPISTEMIC_WORDS
from sdlib.evaluate import SAMPLES_FILE, evaluate, pass_at_k, summarize
from sdlib.grading import VERSION
from sdlib.metrics import expected_keys
from sdlib.problems import Problem
from sdlib.rollout import Rollouts, Sampling, row_seed


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_equals_brute_force_enumeration(n):
    for c in range(n + 1):
        outcomes = [1] * c + [0] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(range(n), k))
            brute = sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)
            assert math.isclose(pass_at_k(n, c, k), brute, rel_tol=1e-12)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError, match="n=4 c=5"):
        pass_at_k(4, 5, 1)


class ScriptedBackend:
    """Answers problem i's j-th sample with a scripted text; can fail on a chosen call."""

    def __init__(self, answers, fail_on_call=None):
        self.answers, self.fail_on_call, self.calls = answers, fail_on_call, []

    def generate(self, prompts, n, sampling, keys=None):
        self.calls.append(list(prompts))
        if self.fail_on_call == len(self.calls):
            raise KeyboardInterrupt("simulated interruption")
        out = Rollouts()
        for i, p in enumerate(prompts):
            question = p.split("\n")[0]
            for j in range(n):
                text = self.answers[question][j]
                out.prompt_index.append(i)
                out.prompt_ids.append([0])
                out.token_ids.append([1] * len(text.split()))
                out.logprobs.append([0.0] * len(text.split()))
                out.text.append(text)
                out.finish_reason.append("stop")
        return out


class PlainTok:
    """No chat template; one token per word."""

    chat_template = None

    def encode(self, text, add_special_tokens=False):
        return text.split()

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": self.encode(text)}


def problems(count):
    return [Problem(id=f"p{i}", question=f"Q{i}", answer=str(i)) for i in range(count)]


def script(count, k):
    # problem i: first i % (k+1) samples right, then wrong, with doubt words in the wrong ones
    return {
        f"Q{i}": [
            f"so \\boxed{{{i}}}" if j < i % (k + 1) else "wait, maybe \\boxed{-1}" for j in range(k)
        ]
        for i in range(count)
    }


def test_table_figures_follow_their_formulas():
    k = 4
    backend = ScriptedBackend(script(6, k))
    res = evaluate(
        backend, PlainTok(), {"set": problems(6)}, k=k, sampling=Sampling(8), progress=False
    )
    row = res.table.loc["set"]
    correct = [i % (k + 1) for i in range(6)]
    assert row["eval/k"] == k and row["eval/problems"] == 6
    assert row["eval/accuracy"] == pytest.approx(sum(correct) / (6 * k))
    assert row["eval/pass@k"] == pytest.approx(sum(c > 0 for c in correct) / 6)
    assert row["eval/pass@1"] == pytest.approx(row["eval/accuracy"])
    # the right answers come first in each script, so a 2-2 tie goes to them
    assert row["eval/maj@k"] == pytest.approx(sum(c >= k / 2 for c in correct) / 6)
    wrong = 6 * k - sum(correct)
    assert row["eval/epi/wait"] == pytest.approx(wrong / (6 * k))
    assert row["eval/epi_total"] == pytest.approx(2 * wrong / (6 * k))
    assert list(res.table.columns) == expected_keys("eval")


def test_interrupted_evaluation_resumes_without_redoing_or_losing(tmp_path):
    k, answers = 2, script(10, 2)
    first = ScriptedBackend(answers, fail_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        evaluate(
            first,
            PlainTok(),
            {"set": problems(10)},
            k=k,
            sampling=Sampling(8),
            out_dir=tmp_path,
            problems_per_batch=3,
            progress=False,
        )
    saved = [json.loads(x) for x in (tmp_path / SAMPLES_FILE).read_text().splitlines()]
    assert len(saved) == 2 * 3 * k  # the two finished batches, nothing else

    second = ScriptedBackend(answers)
    res = evaluate(
        second,
        PlainTok(),
        {"set": problems(10)},
        k=k,
        sampling=Sampling(8),
        out_dir=tmp_path,
        problems_per_batch=3,
        progress=False,
    )
    asked = [p.split("\n")[0] for call in second.calls for p in call]
    assert asked == [f"Q{i}" for i in range(6, 10)]  # only the unfinished problems
    assert len(res.samples) == 10 * k
    assert sorted(res.samples.groupby("problem_id").size().tolist()) == [k] * 10
    fresh = evaluate(
        ScriptedBackend(answers),
        PlainTok(),
        {"set": problems(10)},
        k=k,
        sampling=Sampling(8),
        progress=False,
    )
    assert res.table.equals(fresh.table)


def test_summary_has_overall_row_over_benchmarks():
    backend = ScriptedBackend(script(4, 2))
    sets = {"a": problems(4)[:2], "b": problems(4)[2:]}
    res = evaluate(backend, PlainTok(), sets, k=2, sampling=Sampling(8), progress=False)
    assert list(res.table.index) == ["a", "b", "overall"]
    assert res.table.loc["overall", "eval/problems"] == 4
    assert summarize(res.samples.iloc[0:0]).empty


def test_majority_vote_with_missing_answers_mixed_in():
    # pandas 3 stores a missing answer as NaN: the vote must skip it, not crash on it
    answers = {"Q0": ["no box here", "\\boxed{0}", "\\boxed{0}", "\\boxed{7}"]}
    res = evaluate(
        ScriptedBackend(answers),
        PlainTok(),
        {"s": problems(1)},
        k=4,
        sampling=Sampling(8),
        progress=False,
    )
    assert res.table.loc["s", "eval/maj@k"] == 1.0
    assert res.table.loc["s", "eval/boxed_frac"] == 0.75


class SeededBackend(ScriptedBackend):
    """Sample j of prompt i is a pure function of (sampling.seed, keys[i], j), as in the
    real backends: a random guess that is right about a third of the time."""

    def __init__(self, fail_on_call=None):
        super().__init__({}, fail_on_call)

    def generate(self, prompts, n, sampling, keys=None):
        keys = list(range(len(prompts))) if keys is None else keys
        self.answers = {
            p.split("\n")[0]: [
                f"\\boxed{{{row_seed(sampling.seed, key, j) % 3}}}" for j in range(n)
            ]
            for p, key in zip(prompts, keys, strict=True)
        }
        return super().generate(prompts, n, sampling, keys)


def run_seeded(backend, out=None, per_batch=3, count=8, k=3):
    return evaluate(
        backend, PlainTok(), {"set": problems(count)}, k=k, sampling=Sampling(8, seed=5),
        out_dir=out, problems_per_batch=per_batch, progress=False,
    )  # fmt: skip


def test_resumed_evaluation_draws_the_samples_of_an_uninterrupted_one(tmp_path):
    whole = run_seeded(SeededBackend()).samples
    with pytest.raises(KeyboardInterrupt):
        run_seeded(SeededBackend(fail_on_call=2), tmp_path)
    resumed = run_seeded(SeededBackend(), tmp_path).samples
    key = ["problem_id", "sample"]
    assert whole.sort_values(key)["text"].tolist() == resumed.sort_values(key)["text"].tolist()
    # and batching does not matter either
    other = run_seeded(SeededBackend(), per_batch=5).samples
    assert whole["text"].tolist() == other["text"].tolist()


def test_a_damaged_sample_line_is_reported_and_its_problem_redone(tmp_path):
    first = run_seeded(SeededBackend(), tmp_path)
    path = tmp_path / SAMPLES_FILE
    lines = path.read_text().splitlines(keepends=True)
    lines[4] = lines[4][:10] + "\n"  # a cut line in the middle of the file
    path.write_text("".join(lines))
    backend = SeededBackend()
    with pytest.warns(UserWarning, match=r"samples.jsonl: 1 damaged line.*line 5"):
        again = run_seeded(backend, tmp_path)
    assert [p.split("\n")[0] for call in backend.calls for p in call] == ["Q1"]
    assert again.table.equals(first.table)
    assert len(path.read_text().splitlines()) == 8 * 3


def test_a_prompt_longer_than_the_context_is_a_skipped_row_not_a_hang():
    sets = {"set": problems(3) + [Problem(id="huge", question="Q9 " + "word " * 500, answer="9")]}
    backend = ScriptedBackend(script(10, 2))
    with pytest.warns(UserWarning, match=r"skipped 1 problems .* \(first: huge, a 5\d\d-token"):
        res = evaluate(backend, PlainTok(), sets, k=2, sampling=Sampling(8), progress=False,
                       context=100)  # fmt: skip
    assert sorted(res.samples["problem_id"].unique()) == ["p0", "p1", "p2"]
    assert [p.split("\n")[0] for call in backend.calls for p in call] == ["Q0", "Q1", "Q2"]


def test_a_prefill_starts_every_reply_and_counts_in_its_grade():
    seen = []

    class Prefilled(ScriptedBackend):
        def generate(self, prompts, n, sampling, keys=None):
            seen.extend(prompts)
            return super().generate([p.removesuffix("x =") for p in prompts], n, sampling, keys)

    answers = {f"Q{i}": [f" {i} . \\\\boxed{{{i}}}"] * 2 for i in range(3)}
    res = evaluate(Prefilled(answers), PlainTok(), {"s": problems(3)}, k=2, sampling=Sampling(8),
                   progress=False, prefill="x =")  # fmt: skip
    assert all(p.endswith("x =") for p in seen)
    assert res.samples["text"].str.startswith("x = ").all() and res.samples["correct"].all()
    assert (res.samples["len_tokens"] == 3).all()  # the generated tokens only


def test_an_evaluated_adapter_decodes_merged_and_as_the_unmerged_model_does(tmp_path):
    import peft
    import torch

    from sdlib.config import OnPolicyConfig, from_dict
    from sdlib.experiments.evaluation import LazyBackend
    from sdlib.models import LoraSpec, load_policy
    from sdlib.rollout import TransformersBackend

    trained = load_policy("tiny-random:2x64", lora=LoraSpec())
    torch.manual_seed(0)
    with torch.no_grad():  # a trained adapter: B away from its zero start
        for name, p in trained.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    trained.model.save_pretrained(tmp_path / "adapter")
    cfg = from_dict(OnPolicyConfig, {"model": "tiny-random:2x64", "out": str(tmp_path)})
    lazy = LazyBackend(cfg, str(tmp_path / "adapter"))
    texts = ["What is 3 + 4?", "Compute 12 - 5."]
    greedy = Sampling(12, temperature=0)
    merged = lazy.generate(texts, 2, greedy)
    assert not isinstance(lazy.inner.model, peft.PeftModel)  # one product per layer
    unmerged = TransformersBackend(trained.model, trained.tokenizer, 8, False)
    assert merged.token_ids == unmerged.generate(texts, 2, greedy).token_ids
    for a, b in zip(merged.logprobs, unmerged.generate(texts, 2, greedy).logprobs, strict=True):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-4


def test_a_fully_fine_tuned_checkpoint_is_evaluated_with_its_own_weights(tmp_path):
    import torch

    from sdlib.config import OnPolicyConfig, from_dict
    from sdlib.experiments.evaluation import LazyBackend
    from sdlib.models import load_policy
    from sdlib.rollout import TransformersBackend

    trained = load_policy("tiny-random:2x64")
    torch.manual_seed(0)
    with torch.no_grad():  # every weight moved, the tied head and embedding with them
        for p in trained.model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    trained.model.save_pretrained(tmp_path / "model")
    cfg = from_dict(OnPolicyConfig, {"model": "tiny-random:2x64", "out": str(tmp_path)})
    texts = ["What is 3 + 4?", "Compute 12 - 5."]
    greedy = Sampling(12, temperature=0)
    got = LazyBackend(cfg, str(tmp_path / "model")).generate(texts, 2, greedy)
    want = TransformersBackend(trained.model, trained.tokenizer, 8, False).generate(
        texts, 2, greedy
    )
    base = LazyBackend(cfg, None).generate(texts, 2, greedy)
    assert got.token_ids == want.token_ids != base.token_ids
    for a, b in zip(got.logprobs, want.logprobs, strict=True):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5


def test_two_sets_sharing_problem_ids_stay_apart_in_the_overall_row():
    from sdlib.evaluate import summarize

    def rows(bench, correct):
        return [
            {"benchmark": bench, "problem_id": "1", "correct": c, "pred": "1", "len_tokens": 5,
             "epi_total": 0, "epi_total_word": 0, "finish": "stop", "sample": i,
             **{f"epi/{w}": 0 for w in EPISTEMIC_WORDS}}
            for i, c in enumerate(correct)
        ]  # fmt: skip

    samples = pd.DataFrame(rows("a", [True, True]) + rows("b", [False, False]))
    table = summarize(samples, k=2)
    overall = table.loc["overall"]
    assert overall["eval/problems"] == 2 and overall["eval/k"] == 2
    assert overall["eval/pass@k"] == 0.5 and overall["eval/maj@k"] == 0.5


def test_stored_grades_are_recomputed_under_other_rules_or_an_older_grader(tmp_path):
    """A folder graded by an older grader (its lenient ``2.9999999`` for 3 marked correct)
    or under other rules is never served as is: the stored texts are graded again."""
    answers = {"Q3": ["so \\boxed{2.9999999}", "so \\boxed{3}"]}
    one = [Problem(id="p3", question="Q3", answer="3")]

    def run(rules, backend):
        return evaluate(backend, PlainTok(), {"set": one}, k=2, sampling=Sampling(8),
                        out_dir=tmp_path, progress=False, rules=rules)  # fmt: skip

    careful = run("careful", ScriptedBackend(answers))
    assert careful.samples["correct"].tolist() == [False, True]
    path = tmp_path / SAMPLES_FILE
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    for r in rows:  # as an older sdlib wrote them: no grader recorded, a lenient grade
        del r["grader"]
        r["correct"] = True
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    never = ScriptedBackend(answers, fail_on_call=1)  # nothing may be sampled again
    assert run("careful", never).samples["correct"].tolist() == [False, True]
    assert run("reference", never).samples["correct"].tolist() == [True, True]
    stored = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["grader"] for r in stored] == [f"reference-{VERSION}"] * 2
    assert run("careful", never).table.equals(careful.table)
