"""The study's prompts, in one place: student prompt, SDPO teacher reprompt, Sec. 3 hint.

Every other module, notebook and test imports these strings; none writes its own copy.

    student : {question}\\nPlease reason step by step, and put your final answer within \\boxed{}.
    teacher : {student prompt}\\nCorrect solution:\\n\\n{demonstration}\\n\\nCorrectly solve the
              original question.          (then the student's response tokens follow)
    hint    : {question}\\n\\nCorrect solution: {solution}\\n\\nCorrectly solve the original
              question.
"""

from __future__ import annotations

import re

STUDENT_SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."
TEACHER_TEMPLATE = (
    "{prompt}\nCorrect solution:\n\n{demonstration}\n\nCorrectly solve the original question."
)
FEEDBACK_TEMPLATE = (
    "{prompt}\nFeedback from the environment:\n\n{feedback}"
    "\n\nCorrectly solve the original question."
)
HINT_TEMPLATE = (
    "{question}\n\nCorrect solution: {solution}\n\nCorrectly solve the original question."
)

# The tiny preset's format hint, one worked exchange placed before the question as an
# earlier chat turn. SmolLM2-135M boxes an answer in under 6% of responses without it and
# copies an example written into the same turn; as a turn of its own it answers the new
# question in the shown format (level-1 word problems: 35% right at T 0.7 against 0-2%).
# No level-1 synthetic answer is 100.
FEW_SHOT = ("What is 40 + 60?", "40 + 60 = 100. The answer is \\boxed{100}.")
# The ``thinking`` parameter of configs -> the chat template's switch (None: its default).
THINKING = {"on": True, "off": False, "default": None}

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_THINK_BLOCK = re.compile(r"<think>.*?</think>\s*", re.DOTALL)


def student_prompt(question: str) -> str:
    """The student's single user turn."""
    return f"{question}\n{STUDENT_SUFFIX}"


def teacher_prompt(
    prompt: str, demonstration: str | None = None, feedback: str | None = None
) -> str:
    """The SDPO teacher's user turn: the student prompt plus a correct solution (or, when no
    sibling succeeded, environment feedback if the run uses it)."""
    if demonstration is not None:
        return TEACHER_TEMPLATE.format(prompt=prompt, demonstration=demonstration)
    if feedback is not None:
        return FEEDBACK_TEMPLATE.format(prompt=prompt, feedback=feedback)
    raise ValueError("teacher_prompt needs a demonstration or feedback text")


def hint_prompt(question: str, solution: str) -> str:
    """The context-richness (Sec. 3) prompt: the question followed by a correct solution."""
    return HINT_TEMPLATE.format(question=question, solution=solution)


def split_thinking(text: str) -> tuple[str | None, str | None]:
    """(thinking, answer) of a response: the one place sdlib splits off a thinking block.

    - ``<think> t </think> a``: (`` t ``, `` a``); split at the *last* ``</think>``, so with
      several blocks everything before it is thinking;
    - ``t </think> a``: (``t ``, `` a``): the chat template opened ``<think>`` in the prompt
      (R1-Distill), so the response holds only a lone ``</think>``;
    - ``<think> t`` with no ``</think>``: (`` t``, None): cut off mid-thought, no answer;
    - no tags: (None, text).
    The parts are raw slices (whitespace kept); a leading ``<think>`` is dropped."""
    head, sep, tail = text.rpartition(THINK_CLOSE)
    if not sep:
        before, opened, after = text.partition(THINK_OPEN)
        return (after, None) if opened else (None, text)
    stripped = head.lstrip()
    return stripped.removeprefix(THINK_OPEN) if stripped.startswith(THINK_OPEN) else head, tail


def strip_thinking(text: str) -> str:
    """A solution "without thinking" (PAPER.md): drop every ``<think>...</think>`` block,
    and everything up to a lone ``</think>`` (the template opened ``<think>`` before the
    response began). A solution with no thinking block is left as it is, as in the
    reference: for a model that writes none (SmolLM2) "without thinking" is the full text."""
    text = _THINK_BLOCK.sub("", text)
    if THINK_CLOSE in text:
        text = text.rpartition(THINK_CLOSE)[2]
    return text.strip()


def student_turn(problem) -> str:
    """A problem's student user turn: its question and the study's instruction, or the
    instruction its problem set brings (SciKnowEval: "Please reason step by step.", its
    answer format then in the set's system message, ``meta["system"]``)."""
    return f"{problem.question}\n{problem.meta.get('instruction', STUDENT_SUFFIX)}"


def system_of(problem) -> str | None:
    """The system message a problem's set asks for, if any (the reference files: none)."""
    return problem.meta.get("system")


def chat_messages(user: str, few_shot: bool = False, system: str | None = None) -> list[dict]:
    """One user turn as chat messages: after ``system`` when given, and after the
    ``FEW_SHOT`` exchange when ``few_shot`` (tiny preset; the paper uses none)."""
    shot = [
        {"role": "user", "content": student_prompt(FEW_SHOT[0])},
        {"role": "assistant", "content": FEW_SHOT[1]},
    ]
    head = [{"role": "system", "content": system}] if system else []
    return [*head, *(shot if few_shot else []), {"role": "user", "content": user}]


def chat(
    tokenizer, user: str, thinking: bool | None = None, few_shot: bool = False, system=None
) -> str:
    """Render one user turn with the model's chat template, ready for the assistant's reply.

    ``thinking`` is passed to templates that have a switch (Qwen3 ``enable_thinking``);
    ``None`` leaves the template's default. ``few_shot``, ``system``: see
    ``chat_messages``. Returns text; tokenise it without adding special tokens again.
    """
    kwargs = {} if thinking is None else {"enable_thinking": thinking}
    messages = chat_messages(user, few_shot, system)
    if getattr(tokenizer, "chat_template", None) is None:
        return "".join(f"{m['content']}\n" for m in messages)
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, **kwargs
    )
