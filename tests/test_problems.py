import json
import logging
import re
import time
import tracemalloc
import warnings

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sdlib import problems as P
from sdlib.datasets import (
    coverage_family_subset,
    coverage_subset,
    coverage_suite,
    load_benchmarks,
    load_hub,
    load_pairs,
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
    assert [s.row for s in loaded.skipped] == [2, 3, 4, 5]  # 1-based
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
    with pytest.warns(UserWarning, match="line 3: not valid JSON"):
        loaded = load_jsonl(path)
    assert [p.id for p in loaded] == ["a", "b", "set-3"] and loaded[2].answer == "3"


# --- bad data never throws good data away ---------------------------------------------

GOOD = [
    {"id": "g1", "question": "What is 1 + 1?", "answer": "2"},
    {"id": "g2", "question": "What is 2 + 2?", "answer": "4"},
]


def _write_lines(path, lines):
    """A jsonl file: dicts/lists are dumped, bytes written as they are (hostile lines)."""
    data = b"".join((x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n" for x in lines)
    path.write_bytes(data)
    return path


def _load(loader, path, caplog):
    """``loader(path)`` with its per-row log lines and its summary warning, as one text."""
    caplog.clear()
    with caplog.at_level(logging.WARNING), pytest.warns(UserWarning) as record:
        loaded = loader(str(path))
    return loaded, caplog.text + "\n".join(str(w.message) for w in record)


def _one_bad_line(tmp_path, caplog, bad, kind, row_id="b"):
    """[good, bad, good]: the good rows survive; the bad one is reported with its file,
    line and id, counted by kind, and skipped."""
    path = _write_lines(tmp_path / "set.jsonl", [GOOD[0], bad, GOOD[1]])
    loaded, logs = _load(load_problems, path, caplog)
    assert [p.id for p in loaded] == ["g1", "g2"]
    [skip] = loaded.skipped
    assert (skip.row, skip.id, skip.kind, skip.unit) == (2, row_id, kind, "line")
    where = "line 2" if row_id is None else f"line 2 (id {row_id!r})"
    assert f"{path}: skipped {where}: {skip.reason}" in logs
    assert f"1 rows skipped (1 {kind}; first: {where}" in loaded.summary()
    return skip


@pytest.mark.parametrize("meta", [[1, 2], "abc", 5])
def test_meta_that_is_not_a_mapping_skips_only_its_row(tmp_path, caplog, meta):
    bad = {"id": "b", "question": "Q?", "answer": "1", "meta": meta}
    skip = _one_bad_line(tmp_path, caplog, bad, "bad meta")
    assert f"'meta' = {meta!r}; expected a mapping" in skip.reason


def test_non_utf8_byte_skips_only_its_line(tmp_path, caplog):
    bad = b'{"id": "b", "question": "Q\xff?", "answer": "1"}'
    skip = _one_bad_line(tmp_path, caplog, bad, "not UTF-8")
    assert "byte 0xff" in skip.reason


def test_lone_surrogate_escape_is_skipped_so_saving_cannot_fail(tmp_path, caplog):
    # valid JSON, but no UTF-8 text: save_jsonl (and a tokenizer) would fail on it later
    bad = b'{"id": "b", "question": "Q\\ud800?", "answer": "1"}'
    _one_bad_line(tmp_path, caplog, bad, "not UTF-8")
    with pytest.warns(UserWarning, match="not valid UTF-8"):
        loaded = load_jsonl(tmp_path / "set.jsonl")
    assert load_jsonl(save_jsonl(loaded, tmp_path / "copy.jsonl")).problems == loaded.problems


def test_non_utf8_byte_in_a_json_array_skips_only_its_row(tmp_path, caplog):
    folder = tmp_path / "chem"
    folder.mkdir()
    rows = [
        b'{"idx": 1, "prompt": "Pick.\\nA: 1\\nB: 2", "answer": "A"}',
        b'{"idx": 2, "prompt": "Pick \xff.\\nA: 1", "answer": "B"}',
        b'{"idx": 3, "prompt": "Pick again.\\nA: 1", "answer": "B"}',
    ]
    (folder / "test.json").write_bytes(b"[" + b",\n".join(rows) + b"]")
    loaded, logs = _load(load_sciknoweval, folder / "test.json", caplog)
    assert [p.id for p in loaded] == ["chem-1", "chem-3"]
    [skip] = loaded.skipped
    assert (skip.row, skip.id, skip.kind, skip.unit) == (2, "2", "not UTF-8", "row")
    assert f"{folder / 'test.json'}: skipped row 2 (id '2'): 'prompt' is not valid UTF-8" in logs


@pytest.fixture(scope="module")
def giant_line(tmp_path_factory):
    """A jsonl file whose second row holds a 50 MB question (written once)."""
    path = tmp_path_factory.mktemp("giant") / "giant.jsonl"
    giant = {"id": "huge", "question": "x" * 50_000_000, "answer": "1"}
    return _write_lines(path, [GOOD[0], giant, GOOD[1]])


def test_a_50mb_line_is_skipped_without_being_held(giant_line, caplog):
    tracemalloc.start()
    start = time.perf_counter()
    try:
        loaded, logs = _load(load_problems, giant_line, caplog)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 5 and peak < 3 * P.MAX_LINE_BYTES
    assert [p.id for p in loaded] == ["g1", "g2"]
    [skip] = loaded.skipped
    assert (skip.row, skip.kind) == (2, "too large")  # never decoded, so no id to report
    assert "line of 50,000,046 bytes; the limit is 8,388,608" in logs


@pytest.mark.parametrize(
    "field,size",
    [
        ("question", P.MAX_QUESTION_CHARS + 1),
        ("answer", P.MAX_ANSWER_CHARS + 1),
        ("solution", P.MAX_SOLUTION_CHARS + 1),
        ("source", P.MAX_ID_CHARS + 1),
        ("meta", P.MAX_META_CHARS),  # as JSON, with its braces and key, just over
    ],
)
def test_a_field_over_its_bound_skips_its_row(tmp_path, caplog, field, size):
    bad = {"id": "b", "question": "Q?", "answer": "1"}
    bad[field] = {"k": "x" * size} if field == "meta" else "7" * size
    skip = _one_bad_line(tmp_path, caplog, bad, "too large")
    assert f"{field!r} has " in skip.reason and "characters; the limit is" in skip.reason


def test_fields_at_their_bound_are_kept(tmp_path):
    row = {"id": "i" * P.MAX_ID_CHARS, "question": "q" * P.MAX_QUESTION_CHARS, "answer": "1"}
    row["solution"] = "s" * P.MAX_SOLUTION_CHARS
    loaded = load_jsonl(_write_lines(tmp_path / "big.jsonl", [row]))
    assert len(loaded[0].question) == P.MAX_QUESTION_CHARS and not loaded.skipped


def test_a_giant_parquet_cell_skips_only_its_row(tmp_path, caplog):
    rows = [
        _reference_row("Q1?", "1", "a"),
        _reference_row("q" * (P.MAX_QUESTION_CHARS + 1), "1", "huge"),
        _reference_row("Q2?", "2", "b"),
    ]
    path = tmp_path / "giant.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    loaded, logs = _load(load_problems, path, caplog)
    assert [p.id for p in loaded] == ["a", "b"]
    assert (loaded.skipped[0].row, loaded.skipped[0].id) == (2, "huge")
    assert f"{path}: skipped row 2 (id 'huge'): 'prompt' has 100," in logs


def _parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.mark.parametrize(
    "case,expected",
    [
        ("question/answer columns", "no column prompt or reward_model"),
        ("no answer column", "no column reward_model"),
        ("not parquet", "not a readable parquet file"),
        ("no rows", "no rows"),
    ],
)
def test_parquet_in_a_wrong_layout_is_an_error_naming_file_and_layouts(tmp_path, case, expected):
    path = tmp_path / "mine.parquet"
    if case == "question/answer columns":
        _parquet(path, GOOD)
    elif case == "no answer column":
        _parquet(path, [{"prompt": [{"role": "user", "content": "Q?"}]}])
    elif case == "not parquet":
        path.write_bytes(b"question,answer\nQ?,1\n")
    else:
        pq.write_table(pa.Table.from_pylist([_reference_row("Q?", "1", 0)]).slice(0, 0), path)
    with pytest.raises(ValueError) as err:
        load_problems(str(path))
    text = str(err.value)
    assert text.startswith(f"{path}: ") and expected in text and "accepted layouts:" in text
    assert "\n" not in text  # the CLI prints it as one line


NO_USABLE_ROW = {
    "empty": [],
    "blank lines": [b"", b"  "],
    "only bad rows": [{"id": "x"}, [1], b"{nope"],
}


@pytest.mark.parametrize("case", [*NO_USABLE_ROW, "empty array"])
def test_a_file_without_a_usable_row_is_an_error(tmp_path, case):
    if case == "empty array":
        path = tmp_path / "chem" / "test.json"
        path.parent.mkdir()
        path.write_text("[]")
    else:
        path = _write_lines(tmp_path / "set.jsonl", NO_USABLE_ROW[case])
    with pytest.raises(ValueError) as err, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the skipped rows' own report
        load_benchmarks([str(path)])  # what the CLI calls before any model loads
    text = str(err.value)
    assert text.startswith(f"{path}: ") and "accepted layouts:" in text and "\n" not in text
    if case == "only bad rows":
        assert "no usable row, all 3 skipped (1 no question, 1 not a mapping, 1 not JSON;" in text
        assert "first: line 1 (id 'x'): 'question' = None" in text
    else:
        assert ": no rows; " in text


def test_a_taken_id_with_another_question_is_skipped_true_repeats_are_marked(tmp_path, caplog):
    lines = [
        GOOD[0],
        {"id": "g1", "question": "A different question?", "answer": "2"},
        GOOD[0],  # a true repeat, as in seen_1x64 / seen_8x8
        GOOD[1],
        {**GOOD[1], "answer": "5"},
    ]
    path = _write_lines(tmp_path / "set.jsonl", lines)
    loaded, logs = _load(load_problems, path, caplog)
    assert [p.id for p in loaded] == ["g1#r0", "g1#r1", "g2"]
    assert [(s.row, s.id, s.kind) for s in loaded.skipped] == [
        (2, "g1", "conflicting id"),
        (5, "g2", "conflicting id"),
    ]
    assert f"{path}: skipped line 2 (id 'g1'): id 'g1' is already used by line 1 with a" in logs
    assert "line 4 with a different answer; the first is kept" in loaded.skipped[1].reason
    assert "2 rows skipped (2 conflicting id;" in loaded.summary()


def test_a_file_id_equal_to_a_repeat_mark_is_skipped(tmp_path):
    rows = [_reference_row("Q?", "1", "a"), _reference_row("Q?", "1", "a")]
    rows.append(_reference_row("Another?", "2", "a#r1"))
    _parquet(tmp_path / "marks.parquet", rows)
    with pytest.warns(UserWarning, match="row 3 \\(id 'a#r1'\\)"):
        loaded = load_reference_parquet(tmp_path / "marks.parquet")
    assert [p.id for p in loaded] == ["a#r0", "a#r1"] and loaded[1].question == "Q?"


def test_every_kind_of_bad_row_is_reported_counted_and_skipped(tmp_path, caplog):
    lines = [
        GOOD[0],
        [1, 2],  # a row that is a list
        {"id": "a1", "question": "Q?"},
        {"id": "a2", "question": "Q?", "answer": "  "},
        {"id": "a3", "question": "Q?", "answer": {"x": 1}},
        {"id": "q1", "question": 7, "answer": "1"},
        b'{"id": "n1", "question": NaN, "answer": NaN}',
        b'{"id": "i1", "question": "Q?", "answer": Infinity}',
        {"id": {"k": 1}, "question": "Q?", "answer": "1"},
        b'{"id": "d1", "question": "Q?", "answer": ' + b"9" * 5000 + b"}",  # over int limit
        b"[" * 50_000 + b"]" * 50_000,  # nested past the recursion limit
        b"{not json",
        {"id": "l1", "question": "Q?", "answer": "1", "level": "hard"},
        GOOD[1],
    ]
    path = _write_lines(tmp_path / "set.jsonl", lines)
    loaded, logs = _load(load_problems, path, caplog)
    assert [p.id for p in loaded] == ["g1", "g2"]
    assert [s.row for s in loaded.skipped] == list(range(2, 14))
    ids = [s.id for s in loaded.skipped]
    assert ids == [None, "a1", "a2", "a3", "q1", "n1", "i1", "{'k': 1}", None, None, None, "l1"]
    counts = "4 no answer, 3 not JSON, 2 no question, 1 not a mapping, 1 bad id, 1 bad field"
    assert f"12 rows skipped ({counts}; first: line 2: expected a mapping" in loaded.summary()
    assert f"skipped 12 malformed rows of 14 ({counts};" in logs
    assert all(f"{path}: skipped line {n}" in logs for n in range(2, 14))


def test_many_bad_rows_among_many_good_cost_only_themselves(tmp_path, caplog):
    rows = [{"id": f"r{i}", "question": f"Q {i}?", "answer": str(i)} for i in range(20_000)]
    for i in range(0, 20_000, 500):
        rows[i] = {**rows[i], "meta": [i]}
    path = _write_lines(tmp_path / "many.jsonl", rows)
    loaded, logs = _load(load_problems, path, caplog)
    assert len(loaded) == 19_960 and [s.row for s in loaded.skipped] == list(range(1, 20_000, 500))
    logged = [r for r in caplog.records if "skipped line" in r.getMessage()]
    assert len(logged) == P.MAX_LOGGED_SKIPS and "; 20 more not logged one by one" in logs


def test_line_separators_inside_strings_and_a_bom_are_not_line_breaks(tmp_path):
    # save_jsonl writes U+2028 / U+0085 raw (ensure_ascii=False); only \n ends a JSON line
    items = [Problem("a", "Q\u2028with\x85separators\x1c?", "1"), Problem("b", "Q2?", "2")]
    path = save_jsonl(items, tmp_path / "set.jsonl")
    assert load_jsonl(path).problems == items
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as some editors save
    assert load_jsonl(path).problems == items


def test_a_folder_is_not_a_data_file(tmp_path):
    with pytest.raises(ValueError, match="is a folder; expected one data file"):
        load_problems(str(tmp_path))


def test_sft_pairs_bad_lines_are_reported_by_file_and_line(tmp_path, caplog):
    lines = [
        {"prompt": "p1", "response": "r1"},
        b"{bad json",
        b'{"prompt": "\xff", "response": "r", "problem_id": "p3"}',
        {"prompt": 1, "response": "r", "problem_id": "p4"},
        b"",
        {"prompt": "p", "response": "r" * (400_001)},
        {"prompt": "p2", "response": ""},  # an empty response is data (EOS at once)
    ]
    path = _write_lines(tmp_path / "D_ug.jsonl", lines)
    pairs, logs = _load(lambda p: load_pairs([p]), path, caplog)
    assert [p["prompt"] for p in pairs] == ["p1", "p2"]
    for where in ("line 2: not valid JSON", "line 3 (id 'p3'): not valid UTF-8", "line 4 (id"):
        assert f"{path}: skipped {where}" in logs
    assert "line 6: 'response' has 400,001 characters" in logs
    assert "skipped 4 malformed rows of 6 (1 not JSON, 1 not UTF-8, 1 no prompt, 1 too" in logs


def test_an_sft_file_without_a_usable_pair_is_an_error(tmp_path):
    good = _write_lines(tmp_path / "good.jsonl", [{"prompt": "p", "response": "r"}])
    empty = _write_lines(tmp_path / "empty.jsonl", [])
    with pytest.raises(ValueError, match=re.escape(f"{empty}: no rows; expected jsonl rows")):
        load_pairs([str(good), str(empty)])
    bad = _write_lines(tmp_path / "bad.jsonl", [{"prompt": "p"}])
    with pytest.raises(ValueError, match="bad.jsonl: no usable row, all 1 skipped"), pytest.warns():
        load_pairs([str(bad)])


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
