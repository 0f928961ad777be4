import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sdlib import problems as P
from sdlib.datasets import (
    coverage_family_subset,
    coverage_subset,
    coverage_suite,
    load_hub,
    load_problems,
)
from sdlib.problems import (
    DataUnavailableError,
    Problem,
    ProblemSet,
    base_id,
    dedupe,
    load_jsonl,
    load_reference_parquet,
    load_sciknoweval,
    save_jsonl,
)
from sdlib.prompts import STUDENT_SUFFIX
from sdlib.synthetic import FAMILIES, generate_mix

DAPO_HEAD = (
    "Solve the following math problem step by step. The last line of your response should be of"
    " the form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
DAPO_TAIL = '\n\nRemember to put your answer on its own line after "Answer:".'


def _reference_row(question, answer, index=None, suffix=STUDENT_SUFFIX):
    extra = {} if index is None else {"index": index}
    return {
        "data_source": "test",
        "prompt": [{"role": "user", "content": f"{question}\n{suffix}"}],
        "reward_model": {"ground_truth": answer, "style": "rule"},
        "extra_info": extra,
    }


def _pool(n):
    return [Problem(f"p{i:03d}", f"Question number {i}?", str(i)) for i in range(n)]


# --- the shared reference files ---------------------------------------------------------


@pytest.mark.parametrize(
    "name,size", [("aime24", 30), ("aime25", 30), ("amc23", 40), ("math500", 500)]
)
def test_evaluation_sets_load_bare_questions(shared_data, name, size):
    path = shared_data / "math" / "evaluation" / f"{name}.parquet"
    loaded = load_reference_parquet(path)
    assert len(loaded) == size and not loaded.skipped
    assert len({p.id for p in loaded}) == size
    extra = pq.read_table(path).column("extra_info").to_pylist()
    raw = [(json.loads(e) if isinstance(e, str) else e)["raw_problem"] for e in extra]
    assert [p.question for p in loaded] == [r.strip() for r in raw]
    assert all(p.answer and not p.question.endswith(STUDENT_SUFFIX) for p in loaded)


def test_coverage_files_are_nested_and_repeated(shared_data):
    sets = {n: load_problems(f"seen_{n}") for n in ("1x64", "8x8", "64", "128", "512")}
    distinct = {n: {base_id(p.id) for p in s} for n, s in sets.items()}
    assert [len(d) for d in distinct.values()] == [1, 8, 64, 128, 512]
    assert distinct["1x64"] < distinct["8x8"] < distinct["64"] < distinct["128"] < distinct["512"]
    for name in ("1x64", "8x8"):
        assert len(sets[name]) == 64 and len({p.id for p in sets[name]}) == 64
    # 8x8 is laid out round-robin: the first 8 rows, then the same 8 again, ...
    order = [base_id(p.id) for p in sets["8x8"]]
    assert order == order[:8] * 8 and {p.question for p in sets["1x64"]} == {
        sets["8x8"][0].question
    }


def test_sciknoweval_letters_and_options(shared_data):
    test = load_sciknoweval(shared_data / "sciknoweval" / "chemistry" / "test.json")
    train = load_problems(str(shared_data / "sciknoweval" / "chemistry" / "train.json"))
    assert (len(test), len(train)) == (210, 1890) and not test.skipped
    assert {p.answer for p in test} == set("ABCD")
    assert all("\nA: " in p.question and "\nD: " in p.question for p in test)
    assert not any(p.question.endswith("Please reason step by step.") for p in test)
    assert not {p.id for p in test} & {p.id for p in train}


# --- parsing ----------------------------------------------------------------------------


def test_struct_and_json_columns_parse_alike(tmp_path):
    rows = [
        _reference_row("What is 1 + 1?", "2", "u-1"),
        _reference_row("What is 2 + 2?", "4", "u-2"),
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "struct.parquet")
    encoded = [{k: v if isinstance(v, str) else json.dumps(v) for k, v in r.items()} for r in rows]
    pq.write_table(pa.Table.from_pylist(encoded), tmp_path / "json.parquet")
    a = load_reference_parquet(tmp_path / "struct.parquet", name="x")
    b = load_reference_parquet(tmp_path / "json.parquet", name="x")
    assert a.problems == b.problems
    assert [(p.id, p.question, p.answer) for p in a] == [
        ("u-1", "What is 1 + 1?", "2"),
        ("u-2", "What is 2 + 2?", "4"),
    ]


def test_boilerplate_of_dapo_and_reference_prompts_is_removed():
    assert P.strip_boilerplate(f"{DAPO_HEAD}Find x.{DAPO_TAIL}") == "Find x."
    assert P.strip_boilerplate(f"  Find y.\n{STUDENT_SUFFIX}\n") == "Find y."
    assert P.strip_boilerplate("Please reason step by step about it.") == (
        "Please reason step by step about it."
    )


def test_malformed_rows_are_reported_counted_and_skipped():
    rows = [
        _reference_row("Good question?", "3", "ok-1"),
        _reference_row("No answer?", "", "bad-1"),
        {**_reference_row("x", "1", "bad-2"), "prompt": [{"role": "system", "content": "hi"}]},
        {**_reference_row("x", "1", "bad-3"), "reward_model": {"ground_truth": None}},
        _reference_row("", "1", "bad-4"),  # nothing left once the instruction is removed
    ]
    with pytest.warns(UserWarning, match="skipped 4 malformed rows"):
        loaded = P.parse_rows(rows, "demo", P.REFERENCE)
    assert [p.id for p in loaded] == ["ok-1"]
    assert [s.id for s in loaded.skipped] == ["bad-1", "bad-2", "bad-3", "bad-4"]
    assert [s.row for s in loaded.skipped] == [1, 2, 3, 4]
    assert "reward_model.ground_truth" in loaded.skipped[0].reason
    assert "'prompt'" in loaded.skipped[1].reason and "expected" in loaded.skipped[2].reason
    assert "4 rows skipped" in loaded.summary()


def test_multiple_choice_answer_must_be_a_letter():
    rows = [{"idx": i, "prompt": "Pick one.\nA: 1\nB: 2", "answer": a} for i, a in enumerate("BE")]
    rows.append({"idx": 9, "prompt": "Pick.", "answer": "AB"})
    with pytest.warns(UserWarning):
        loaded = P.parse_rows(rows, "chem", P.SCIKNOWEVAL)
    assert [p.id for p in loaded] == ["chem-0"]
    assert "expected one of ['A', 'B', 'C', 'D']" in loaded.skipped[0].reason
    assert "'AB'" in loaded.skipped[1].reason


def test_jsonl_round_trip_and_bad_lines(tmp_path):
    items = [
        Problem("a", "Q1?", "1", solution="s", source="mine", level=2, meta={"k": [1, 2]}),
        Problem("b", "Q2?", "2"),
    ]
    path = save_jsonl(items, tmp_path / "sub" / "set.jsonl")
    assert load_jsonl(path).problems == items
    assert Problem.from_dict(items[0].to_dict()) == items[0] and hash(items[0]) == hash(items[0])
    with path.open("a") as f:
        f.write("{not json\n" + json.dumps({"question": "Q3?", "answer": 3}) + "\n")
    with pytest.warns(UserWarning, match="line 3 is not valid JSON"):
        loaded = load_jsonl(path)
    assert [p.id for p in loaded] == ["a", "b", "set-3"] and loaded[2].answer == "3"


# --- Hub --------------------------------------------------------------------------------


def test_hub_rows_go_through_the_same_parser_and_dapo_is_deduplicated(monkeypatch):
    datasets = pytest.importorskip("datasets")
    dapo = [
        _reference_row(f"{DAPO_HEAD}Find {q}.", a, f"id-{i}", suffix=DAPO_TAIL.strip())
        for i, (q, a) in enumerate([("x", "1"), ("y", "2"), ("x", "1"), ("z", "3"), ("y", "2")])
    ]
    math500 = [{"problem": "Add.", "answer": "5", "solution": "2+3", "unique_id": "test/a/1.json"}]
    tables = {"BytedTsinghua-SIA/DAPO-Math-17k": dapo, "HuggingFaceH4/MATH-500": math500}
    calls = []

    def fake_load_dataset(hub_id, split=None):
        calls.append((hub_id, split))
        return datasets.Dataset.from_list(tables[hub_id])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    loaded = load_problems("dapo")
    assert [(p.id, p.question) for p in loaded] == [
        ("id-0", "Find x."),
        ("id-1", "Find y."),
        ("id-3", "Find z."),
    ]
    assert loaded.duplicates == 2 and "2 duplicate rows removed" in loaded.summary()
    m = load_hub("math500")
    assert (m[0].id, m[0].question, m[0].answer, m[0].solution) == (
        "test/a/1.json",
        "Add.",
        "5",
        "2+3",
    )
    tables["someone/other"] = [{"question": "Q?", "answer": 4.0}]
    other = load_hub("someone/other", split="test")
    assert (other[0].id, other[0].answer, other.name) == ("other-0", "4", "other")
    assert calls == [
        ("BytedTsinghua-SIA/DAPO-Math-17k", "train"),
        ("HuggingFaceH4/MATH-500", "test"),
        ("someone/other", "test"),
    ]


def test_offline_hub_error_names_the_dataset_and_the_fix(monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # datasets reads the variables at import time, so set its flag too
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataUnavailableError) as err:
        load_hub("nobody-sdlib/no-such-dataset")
    text = str(err.value)
    assert "'nobody-sdlib/no-such-dataset'" in text
    assert (
        "datasets.load_dataset('nobody-sdlib/no-such-dataset'" in text and "SDLIB_DATA_ROOT" in text
    )


# --- one entry point --------------------------------------------------------------------


def test_load_problems_resolves_paths_names_and_synthetic(tmp_path, monkeypatch):
    monkeypatch.setenv("SDLIB_DATA_ROOT", str(tmp_path))
    folder = tmp_path / "math" / "evaluation"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([_reference_row("Q?", "1", 0)]), folder / "amc23.parquet")
    assert [p.id for p in load_problems("amc23")] == ["amc23-0"]
    assert load_problems(folder / "amc23.parquet").name == "amc23"
    synthetic = load_problems("synthetic:addition+counting:1-2:12:3")
    assert len(synthetic) == 12 and {p.level for p in synthetic} == {1, 2}
    assert synthetic.problems == generate_mix(["addition", "counting"], [1, 2], 12, 3)
    assert {p.source for p in load_problems("synthetic:mix")} == set(FAMILIES)
    with pytest.raises(FileNotFoundError, match="SDLIB_DATA_ROOT"):
        load_problems("seen_64")
    with pytest.raises(ValueError, match="accepted: .*seen_8x8.*dapo.*synthetic:"):
        load_problems("no_such_set")
    with pytest.raises(ValueError, match="level, count and seed must be integers"):
        load_problems("synthetic:addition:one")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_problems(str(tmp_path / "missing.jsonl"))


# --- dedupe and coverage ----------------------------------------------------------------


def test_dedupe_ignores_case_and_spacing_and_keeps_the_first():
    items = [
        Problem("a", "Find  X.", "1"),
        Problem("b", "find x.", "2"),
        Problem("c", "Find y.", "3"),
    ]
    assert [p.id for p in dedupe(items)] == ["a", "c"]


def test_coverage_subsets_are_nested_seeded_and_repeated():
    pool = _pool(600)
    suite = coverage_suite(pool, seed=1)
    ids = {name: [base_id(p.id) for p in items] for name, items in suite.items()}
    assert {k: len(v) for k, v in ids.items()} == {
        "1x64": 64,
        "8x8": 64,
        "64": 64,
        "128": 128,
        "512": 512,
    }
    assert set(ids["1x64"]) < set(ids["8x8"]) < set(ids["64"]) < set(ids["128"]) < set(ids["512"])
    assert len({p.id for p in suite["8x8"]}) == 64 and suite["8x8"][0].id.endswith("#r0")
    assert ids["8x8"] == ids["8x8"][:8] * 8 and len({p.question for p in suite["8x8"]}) == 8
    # the loader's row order does not matter; the seed does
    assert coverage_subset(pool[::-1], 64, seed=1) == suite["64"]
    assert coverage_subset(pool, 64, seed=2) != suite["64"]
    with pytest.raises(ValueError, match="size <= 600"):
        coverage_subset(pool, 601)


def test_coverage_family_subset_nests_families_and_balances():
    pool = generate_mix(None, [1, 2], 440, seed=0)
    one, four = (coverage_family_subset(pool, n, 32, seed=3) for n in (1, 4))
    assert len({p.source for p in one}) == 1 and len({p.source for p in four}) == 4
    assert {p.source for p in one} < {p.source for p in four}
    counts = sorted([p.source for p in four].count(s) for s in {p.source for p in four})
    assert counts == [8, 8, 8, 8]
    with pytest.raises(ValueError, match="n_families=99"):
        coverage_family_subset(pool, 99, 32)


def test_problem_set_protocol():
    items = _pool(3)
    ps = ProblemSet("demo", items)
    assert len(ps) == 3 and list(ps) == items and ps[1] == items[1]
    assert ps.summary() == "demo: 3 problems"
