"""An experiment's results folder: its tables (csv) and figures (png), by name."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


class Results:
    """Tables and figures of one experiment, written to ``<out>/<name>/`` as they are made,
    and kept by name for the notebook to show (``res.tables[...]``, ``res.figures[...]``)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.tables: dict[str, pd.DataFrame] = {}
        self.figures: dict[str, Path] = {}

    def table(self, name: str, frame: pd.DataFrame) -> pd.DataFrame:
        (self.folder / "tables").mkdir(parents=True, exist_ok=True)
        frame.to_csv(self.folder / "tables" / f"{name}.csv")
        self.tables[name] = frame
        return frame

    def figure(self, name: str, fig) -> Path:
        import matplotlib.pyplot as plt

        (self.folder / "figures").mkdir(parents=True, exist_ok=True)
        path = self.folder / "figures" / f"{name}.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        self.figures[name] = path
        return path
