import pytest

from sdlib.behavior import (
    EPISTEMIC_WORDS,
    behavior_row,
    epistemic_counts,
    epistemic_total,
)

ZERO = dict.fromkeys(EPISTEMIC_WORDS, 0)


class WhitespaceTokenizer:
    """Stands in for a Hugging Face tokenizer: one token per whitespace-separated piece."""

    def encode(self, text, add_special_tokens=True):
        assert add_special_tokens is False  # response lengths never count BOS/EOS
        return text.split()


def test_word_list_is_the_papers():
    assert EPISTEMIC_WORDS == (
        "wait", "hmm", "perhaps", "maybe", "actually",
        "alternatively", "seems", "might", "likely", "check",
    )  # fmt: skip


def test_counts_both_modes_on_a_mixed_text():
    text = "Wait, checking... unlikely. Hmm, hmmm maybe? Actually it seems likely."
    paper = ZERO | {"wait": 1, "hmm": 2, "maybe": 1, "actually": 1, "seems": 1,
                    "likely": 2, "check": 1}  # fmt: skip
    word = ZERO | {"wait": 1, "hmm": 2, "maybe": 1, "actually": 1, "seems": 1, "likely": 1}
    assert epistemic_counts(text) == paper
    assert epistemic_counts(text, mode="word") == word
    assert epistemic_total(text) == 9
    assert epistemic_total(text, mode="word") == 7


def test_substring_mode_counts_inside_words_and_word_mode_does_not():
    text = "The mighty checker rechecked; alternatively-minded folks waited. Perhapss."
    assert epistemic_counts(text) == ZERO | {
        "might": 1, "check": 2, "alternatively": 1, "wait": 1, "perhaps": 1,
    }  # fmt: skip
    # "alternatively-minded": the hyphen is a word boundary, so it is a whole word
    assert epistemic_counts(text, mode="word") == ZERO | {"alternatively": 1}


def test_hmm_stretching_and_non_overlap():
    # substring: one "hmm" per h ("hmmmmm" holds one), word: hmm+ is one word each
    assert epistemic_counts("hmmmmm hmm hm hmmhmm")["hmm"] == 4
    assert epistemic_counts("hmmmmm hmm hm hmmhmm", mode="word")["hmm"] == 2
    assert epistemic_counts("waitwait wait", mode="word")["wait"] == 1
    assert epistemic_counts("waitwait wait")["wait"] == 3


def test_case_insensitive_in_both_modes():
    text = "WAIT Wait wait wAiT MAYBE Maybe CHECK"
    for mode in ("substring", "word"):
        counts = epistemic_counts(text, mode=mode)
        assert (counts["wait"], counts["maybe"], counts["check"]) == (4, 2, 1)


def test_empty_text_and_bad_mode():
    assert epistemic_counts("") == ZERO
    assert epistemic_counts("", mode="word") == ZERO
    assert epistemic_total("") == 0
    with pytest.raises(ValueError, match="mode"):
        epistemic_counts("wait", mode="lemma")


def test_behavior_row_with_fake_tokenizer():
    text = "<think>wait let me check that </think> the answer is \\boxed{5}"
    row = behavior_row(text, tokenizer=WhitespaceTokenizer())
    assert row["len_tokens"] == 10  # "<think>wait" is one whitespace piece
    assert row["think_tokens"] == 5  # wait let me check that
    assert row["answer_tokens"] == 4  # the answer is \boxed{5}
    assert row["epi_total"] == 2 and row["epi_total_word"] == 2
    assert row["epi/wait"] == 1 and row["epi/check"] == 1 and row["epi/hmm"] == 0


def test_behavior_row_prefers_token_ids_for_length():
    text = "Hmm, unlikely.</think>42"
    row = behavior_row(text, tokenizer=WhitespaceTokenizer(), token_ids=[7] * 13)
    assert row["len_tokens"] == 13
    assert (row["think_tokens"], row["answer_tokens"]) == (2, 1)
    assert (row["epi_total"], row["epi_total_word"]) == (2, 1)  # "unlikely" only as substring


def test_behavior_row_without_tokenizer_and_keys():
    row = behavior_row("maybe", token_ids=[1, 2])
    assert row["len_tokens"] == 2 and row["think_tokens"] is None
    assert behavior_row("maybe")["len_tokens"] is None
    expected = {"len_tokens", "think_tokens", "answer_tokens", "epi_total", "epi_total_word"}
    assert set(row) == expected | {f"epi/{w}" for w in EPISTEMIC_WORDS}
    assert sum(row[f"epi/{w}"] for w in EPISTEMIC_WORDS) == row["epi_total"]


def test_no_think_tag_is_all_answer():
    row = behavior_row("just an answer", tokenizer=WhitespaceTokenizer())
    assert (row["think_tokens"], row["answer_tokens"], row["len_tokens"]) == (0, 3, 3)
