"""Progress bars and status lines, shown where someone is watching and never kept in an
executed notebook.

- JupyterLab: a widget bar (text without ipywidgets); a status line replaces the cell's last.
- ``sdlib run`` (papermill; it sets ``SDLIB_TEXT_PROGRESS=1`` for its kernels): text on the
  kernel process's own stderr, which ``sdlib run`` points at the terminal (or, running
  notebooks at once, at the notebook's log), not into the cell's outputs: a bar redrawn
  there would leave one output per redraw in the executed notebook.
- Anywhere else (the CLI, tests): text on stderr.

A bar with nothing to do (``total`` 0: work found finished) is not shown; ``status`` says in
one line what was found instead. transformers' own bars ("Loading weights", a frozen widget
in an executed notebook) are off once this module is imported.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys

from tqdm import std

TEXT_PROGRESS = "SDLIB_TEXT_PROGRESS"


def _quiet_transformers() -> None:
    """transformers' bars off; the Hub's downloads keep theirs (transformers' switch turns
    both off), unless they were off already."""
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging

    hub_off = are_progress_bars_disabled()
    logging.disable_progress_bar()
    if not hub_off:
        enable_progress_bars()


_quiet_transformers()


def _kernel():
    """The IPython kernel this runs in, or None (a script, the CLI, a test)."""
    if "ipykernel" not in sys.modules:
        return None
    from IPython import get_ipython

    shell = get_ipython()
    return shell if shell is not None and hasattr(shell, "kernel") else None


def _batch() -> bool:
    """In a kernel papermill runs for ``sdlib run``: no one reads the cells as they run."""
    return os.environ.get(TEXT_PROGRESS) == "1" and _kernel() is not None


@functools.cache
def _process_stderr():
    """The kernel process's own stderr. ipykernel sends what is written to fd 2 into the
    notebook; the stream it hands out (``sys.stderr``) reports, as its ``fileno``, a copy of
    the stderr the process started with, kept before the capture began."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no copy kept: fd 2 was never captured
        return sys.__stderr__
    return open(os.dup(fd), "w", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115


def tqdm(iterable=None, **kwargs):
    """A progress bar (``tqdm``'s arguments); hidden when its total is 0."""
    if kwargs.get("total") is not None:
        left = kwargs["total"] - kwargs.get("initial", 0)
    else:
        left = len(iterable) if hasattr(iterable, "__len__") else None
    if left == 0:
        kwargs["disable"] = True
    if _batch():
        return std.tqdm(iterable, file=_process_stderr(), **kwargs)
    if _kernel() is not None and importlib.util.find_spec("ipywidgets"):
        from tqdm.notebook import tqdm as widget

        return widget(iterable, **kwargs)
    return std.tqdm(iterable, **kwargs)


_shown: dict[int, object] = {}  # the cell (execution count) -> its status display


def status(text: str) -> None:
    """One line saying what happened where no bar ran (e.g. finished work found on disk).
    In JupyterLab each replaces the cell's last, so a cell shows one line however many."""
    shell = _kernel()
    if shell is None or _batch():
        print(text, file=_process_stderr() if _batch() else sys.stderr, flush=True)
        return
    from IPython.display import Pretty, display

    cell = shell.execution_count
    if cell in _shown:
        _shown[cell].update(Pretty(text))
    else:
        _shown.clear()
        _shown[cell] = display(Pretty(text), display_id=True)
