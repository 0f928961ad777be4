"""Progress: bars where someone watches, none for finished work, none kept in a notebook."""

import os

from sdlib import progress
from sdlib.evaluate import evaluate
from sdlib.problems import Problem
from sdlib.rollout import Rollouts, Sampling


class Echo:
    """Answers every sample with 1."""

    def generate(self, prompts, n, sampling, keys=None):
        out = Rollouts()
        for i in range(len(prompts)):
            for _ in range(n):
                text = "so \\boxed{1}"
                out.prompt_index.append(i)
                out.prompt_ids.append([0])
                out.token_ids.append([1, 2])
                out.logprobs.append([0.0, 0.0])
                out.text.append(text)
                out.finish_reason.append("stop")
        return out


class Words:
    chat_template = None

    def encode(self, text, add_special_tokens=False):
        return text.split()

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": self.encode(text)}


def test_a_cached_evaluation_shows_no_bar_but_says_where_it_found_its_samples(tmp_path, capsys):
    sets = {"set": [Problem(id=f"p{i}", question=f"Q{i}", answer=str(i)) for i in range(5)]}
    run = lambda: evaluate(Echo(), Words(), sets, k=2, sampling=Sampling(8), out_dir=tmp_path)  # noqa: E731
    first = run()
    said = capsys.readouterr().err
    assert "evaluate:" in said and "5/5" in said  # the bar of the work done
    again = run()
    said = capsys.readouterr().err
    assert said.strip() == f"evaluate: 5 problems x 2 samples found in {tmp_path}"
    assert again.samples.equals(first.samples)


def test_a_bar_with_nothing_left_to_do_is_not_shown(capsys):
    for bar in (progress.tqdm(total=0), progress.tqdm(range(4, 4)),
                progress.tqdm(range(4, 4), initial=4, total=4)):  # fmt: skip
        list(bar) if bar.iterable is not None else bar.update(0)
        bar.close()
    assert capsys.readouterr().err == ""
    with progress.tqdm(range(2, 4), initial=2, total=4, desc="steps") as bar:
        list(bar)
    assert "steps: 100%" in capsys.readouterr().err


class Captured:
    """ipykernel's sys.stderr: text written here becomes the cell's output; its fileno is
    a copy of the stderr the process started with."""

    def __init__(self, fd):
        self.fd, self.text = fd, ""

    def fileno(self):
        return self.fd

    def write(self, text):
        self.text += text

    def flush(self):
        pass


def test_under_sdlib_run_bars_and_status_go_to_the_process_stderr_not_the_cell(monkeypatch):
    read, write = os.pipe()
    cell = Captured(write)
    monkeypatch.setattr(progress.sys, "stderr", cell)
    monkeypatch.setattr(progress, "_kernel", lambda: object())  # as in papermill's kernel
    monkeypatch.setenv(progress.TEXT_PROGRESS, "1")
    progress._process_stderr.cache_clear()
    try:
        with progress.tqdm(total=3, desc="grpo steps") as bar:
            bar.update(3)
        progress.status("evaluate: 3 problems x 2 samples found in here")
        progress._process_stderr().close()  # with the cell's copy, the last writer
        os.close(write)
        with os.fdopen(read) as terminal:
            shown = terminal.read()
    finally:
        progress._process_stderr.cache_clear()
    assert cell.text == ""  # the notebook keeps nothing
    assert "grpo steps: 100%" in shown and shown.endswith("found in here\n")


def test_transformers_loading_bars_are_off_and_hub_downloads_keep_theirs():
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging

    assert not logging.is_progress_bar_enabled()
    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") is None:
        assert not are_progress_bars_disabled()


def test_in_jupyterlab_status_lines_of_a_cell_replace_each_other(monkeypatch):
    shown = []

    class Handle:
        def update(self, obj):
            shown[-1] = obj.data

    class Shell:
        kernel, execution_count = object(), 7

    monkeypatch.delenv(progress.TEXT_PROGRESS, raising=False)
    monkeypatch.setattr(progress, "_kernel", lambda: Shell())
    import IPython.display

    def display(obj, display_id=False):
        shown.append(obj.data)
        return Handle()

    monkeypatch.setattr(IPython.display, "display", display)
    progress._shown.clear()
    for i in range(3):
        progress.status(f"evaluate: found {i}")
    Shell.execution_count = 8
    progress.status("grpo: found")
    assert shown == ["evaluate: found 2", "grpo: found"]
