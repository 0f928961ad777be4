"""Progress bars: JupyterLab's widget bar where it can render, text everywhere else.

``sdlib run`` executes notebooks with papermill and streams each kernel's stderr to the
terminal, where only text bars show; it sets ``SDLIB_TEXT_PROGRESS=1`` for its kernels.
Without ipywidgets a notebook gets text bars too (tqdm.auto would warn and fall back).
"""

from __future__ import annotations

import importlib.util
import os

if os.environ.get("SDLIB_TEXT_PROGRESS") != "1" and importlib.util.find_spec("ipywidgets"):
    from tqdm.auto import tqdm
else:
    from tqdm.std import tqdm

__all__ = ["tqdm"]
