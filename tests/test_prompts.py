from sdlib.prompts import (
    STUDENT_SUFFIX,
    chat,
    hint_prompt,
    split_thinking,
    strip_thinking,
    student_prompt,
    teacher_prompt,
)


def test_templates_are_the_papers():
    assert student_prompt("What is 2+2?") == (
        "What is 2+2?\nPlease reason step by step, and put your final answer within \\boxed{}."
    )
    assert (
        teacher_prompt("P", "D")
        == "P\nCorrect solution:\n\nD\n\nCorrectly solve the original question."
    )
    assert (
        hint_prompt("Q", "S")
        == "Q\n\nCorrect solution: S\n\nCorrectly solve the original question."
    )


def test_few_shot_is_an_earlier_exchange_of_the_chat(bundled):
    from sdlib.prompts import FEW_SHOT

    plain = chat(bundled.tokenizer, student_prompt("Q?"))
    shot = chat(bundled.tokenizer, student_prompt("Q?"), few_shot=True)
    assert FEW_SHOT[0] not in plain
    # the worked exchange comes first, as its own user and assistant turns
    assert shot.index(FEW_SHOT[0]) < shot.index(FEW_SHOT[1]) < shot.index("Q?\n" + STUDENT_SUFFIX)
    assert shot.count("<|im_start|>user") == 2 and shot.count("<|im_start|>assistant") == 2


def test_split_thinking_forms():
    # the one splitter: grading's answer part and behaviour's token counts are its halves
    assert split_thinking("<think>hmm</think> It is \\boxed{4}") == ("hmm", " It is \\boxed{4}")
    assert split_thinking("  <think>a b</think>c") == ("a b", "c")
    # no opening tag: the chat template opened it (R1-Distill)
    assert split_thinking("lone part</think>answer") == ("lone part", "answer")
    # no closing tag: cut off mid-thought, so there is no answer part
    assert split_thinking("<think>cut off mid") == ("cut off mid", None)
    assert split_thinking("no thinking here") == (None, "no thinking here")
    # several blocks: the last </think> splits (a model may write one inside its thinking)
    assert split_thinking("a</think>b</think>c") == ("a</think>b", "c")
    assert split_thinking("<think>a</think> b <think>c</think> d") == ("a</think> b <think>c", " d")


def test_strip_thinking_both_forms():
    assert strip_thinking("<think>long doubt</think>\nSo x = 3.") == "So x = 3."
    assert strip_thinking("wait... maybe</think>\n\nx = 3") == "x = 3"
    assert strip_thinking("plain solution") == "plain solution"


def test_chat_template_and_thinking_switch(bundled):
    text = chat(bundled.tokenizer, "hello")
    assert text.rstrip().endswith("assistant") and "hello" in text

    class Switch:
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt, **kw):
            return f"{messages[0]['content']}|{kw.get('enable_thinking')}"

    assert chat(Switch(), "q", thinking=False) == "q|False"
    assert chat(Switch(), "q") == "q|None"


def test_a_solution_without_a_thinking_block_is_left_as_it_is():
    # the reference strips only <think> blocks: nothing else of a demonstration goes
    text = "First add 2 and 2.\nThat gives 4.\nThe answer is \\boxed{4}.\nDone."
    assert strip_thinking(text) == text


def test_chemistry_keeps_its_own_instruction_and_system_message(shared_data):
    from sdlib.datasets import load_problems
    from sdlib.grading import grade_response
    from sdlib.prompts import chat_messages, student_turn, system_of

    p = load_problems("chemistry")[0]
    turn = student_turn(p)
    assert turn.endswith("\nPlease reason step by step.") and "boxed" not in turn
    assert "<answer>" in system_of(p)
    messages = chat_messages(turn, system=system_of(p))
    assert [m["role"] for m in messages] == ["system", "user"]
    right = f"<reasoning>x</reasoning>\n<answer>\n{p.answer}\n</answer>"
    assert grade_response(right, p.answer).correct
    assert not grade_response(
        right.replace(p.answer, "D" if p.answer != "D" else "A"), p.answer
    ).correct
