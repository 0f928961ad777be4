"""Bring a run's results folders written before findings and captions existed up to
today's report, from what each folder holds: the findings at the top of its notes.md
(each experiment's ``findings``, computed from its tables) and a caption beside each figure
(its ``CAPTIONS``). Nothing is trained, evaluated or drawn again.

    python -c "from sdlib.experiments.refresh import refresh; refresh('runs/organism/full')"
"""

from __future__ import annotations

from pathlib import Path

from sdlib.experiments import context, coverage, mechanism, organism, sdpo_grpo, sft, teacher
from sdlib.experiments.results import CAPTION, Results, split_findings

MODULES = {m.NAME: m for m in (organism, context, sft, sdpo_grpo, teacher, coverage, mechanism)}


def refresh(root: str | Path, names: list[str] | None = None) -> list[str]:
    """Rewrite the findings of each notebook's notes (the rest kept as it is) and add the
    captions its figures lack; returns the notebooks refreshed."""
    done = []
    for name in names or list(MODULES):
        folder = Path(root) / name
        if name not in MODULES or not (folder / "notes.md").exists():
            continue
        module, res = MODULES[name], Results.load(folder)
        _, rest = split_findings(res.text)
        res.notes([rest.rstrip("\n")], findings=module.findings(res.tables))
        for figure, text in module.CAPTIONS.items():
            png = folder / "figures" / f"{figure}.png"
            if png.exists() and not png.with_suffix(CAPTION).exists():
                png.with_suffix(CAPTION).write_text(text + "\n")
        done.append(name)
    return done
