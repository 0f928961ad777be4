"""An experiment's results folder: its tables (csv), figures (png) and notes (markdown)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pandas as pd

from sdlib import clock
from sdlib.stats import pretty

TIMINGS = "timings.json"


def timed(run):
    """An experiment's ``run(cfg) -> Results``, its seconds per phase (``sdlib.clock``)
    written beside its results as ``timings.json`` (``sdlib run`` prints them)."""

    @functools.wraps(run)
    def wrapper(cfg, *args, **kwargs):
        clock.reset()
        with clock.phase("other"):
            res = run(cfg, *args, **kwargs)
        res.folder.mkdir(parents=True, exist_ok=True)
        seconds = {k: round(v, 2) for k, v in clock.totals().items()}
        (res.folder / TIMINGS).write_text(json.dumps(seconds, indent=1) + "\n")
        return res

    return wrapper


class Results:
    """Tables and figures of one experiment, written to ``<out>/<name>/`` as they are made,
    and kept by name for the notebook to show (``res.tables[...]``, ``res.figures[...]``)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.tables: dict[str, pd.DataFrame] = {}
        self.figures: dict[str, Path] = {}
        self.text = ""

    def table(self, name: str, frame: pd.DataFrame) -> pd.DataFrame:
        (self.folder / "tables").mkdir(parents=True, exist_ok=True)
        frame.to_csv(self.folder / "tables" / f"{name}.csv")
        self.tables[name] = frame
        return frame

    def view(self, name: str) -> pd.DataFrame:
        """Table ``name`` for reading: each value beside its 95% interval, ``v [lo, hi]``."""
        return pretty(self.tables[name])

    def notes(self, lines: list[str]) -> Path:
        """``notes.md``: what the tables show, in words (which differences exceed noise)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.text = "\n".join(lines) + "\n"
        path = self.folder / "notes.md"
        path.write_text(self.text)
        return path

    def figure(self, name: str, fig) -> Path:
        import matplotlib.pyplot as plt

        (self.folder / "figures").mkdir(parents=True, exist_ok=True)
        path = self.folder / "figures" / f"{name}.png"
        with clock.phase("figures"):
            fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        self.figures[name] = path
        return path
