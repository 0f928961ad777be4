"""The organism's tokenizer: a word-level ``PreTrainedTokenizerFast`` with a chat template.

Vocabulary: special tokens (pad, unk, eos, role markers), the fixed phrases of the study's
prompts as single tokens (taken from ``sdlib.prompts``, never retyped), whole numbers
0..199, and every word of the language, each with and without a leading space. A space
belongs to the word after it, so ``x = 4`` is three tokens, not five; any other
whitespace (a newline) is a token of its own. Decoding concatenates tokens, hence
``decode(encode(text)) == text`` exactly for every text the language and prompts write.

Chat template (the study's single user turn, optionally after earlier turns)::

    <|user|>{content}<|eos|><|assistant|>{response}<|eos|>

``<think>`` and ``</think>`` are ordinary tokens, so ``skip_special_tokens`` keeps them
and sdlib's grader still finds the answer after ``</think>``.
"""

from __future__ import annotations

import re

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from sdlib import prompts
from sdlib.organism import language

PAD, UNK, EOS = "<|pad|>", "<|unk|>", "<|eos|>"
ROLES = ("system", "user", "assistant")
SPECIAL = (PAD, UNK, EOS, *(f"<|{r}|>" for r in ROLES))

# One piece per word, number, \boxed{, think tag or symbol, with its leading space; other
# whitespace stands alone.
PIECE = r" ?(?:</?think>|\\boxed\{|[A-Za-z]+|[0-9]+|[^\sA-Za-z0-9])|\s"

CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('the organism chat template has no role ' + m['role']) }}"
    "{%- endif -%}"
    "<|{{ m['role'] }}|>{{ m['content'] }}<|eos|>"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)


def chat_text(user: str, response: str = "") -> str:
    """``CHAT_TEMPLATE`` rendered for one user turn and the start (or all) of the reply,
    without Jinja (the corpus renders ~10^5 of them; a test checks the two agree)."""
    return f"<|user|>{user}{EOS}<|assistant|>{response}"


def prompt_phrases() -> list[str]:
    """The fixed text of the study's prompts, one token each: the student instruction and
    the literal parts of the teacher, feedback and hint templates."""
    templates = (prompts.TEACHER_TEMPLATE, prompts.FEEDBACK_TEMPLATE, prompts.HINT_TEMPLATE)
    parts = [prompts.STUDENT_SUFFIX]
    for template in templates:
        parts += [p for p in re.split(r"\{\w+\}", template) if p]
    return sorted(set(parts))


def vocabulary() -> list[str]:
    """Plain (non-special) tokens: numbers and words, bare and with a leading space."""
    items = [str(n) for n in range(language.MAX_NUMBER + 1)]
    items += language.words() + ["\\boxed{", "}"]
    return [*dict.fromkeys([*items, *(f" {w}" for w in items), " ", "\n"])]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The tokenizer, built from scratch (deterministic: same vocabulary, same ids)."""
    vocab = {tok: i for i, tok in enumerate([*SPECIAL, *vocabulary()])}
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(PIECE), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        unk_token=UNK,
        eos_token=EOS,
        additional_special_tokens=list(SPECIAL[3:]),
        clean_up_tokenization_spaces=False,
        padding_side="left",
        model_max_length=1024,
    )
    # Phrases are matched before pre-tokenization; as non-special tokens they survive
    # ``skip_special_tokens`` (they are part of prompts and demonstrations, not markup).
    tok.add_tokens(prompt_phrases())
    tok.chat_template = CHAT_TEMPLATE
    return tok
