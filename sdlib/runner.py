"""``sdlib run``: execute experiment notebooks through papermill into one run folder.

    runs/<preset>/<timestamp>/
        notebooks/<name>.ipynb       executed copies (with outputs); <name>.done when finished
        <name>/tables/*.csv, <name>/figures/*.png
        train/, eval/                content-addressed training and evaluation runs
        report.md                    every table and figure, in the study's order

Parameters come from ``params/<preset>/<name>.yaml``, then ``-p key value`` overrides, and
are validated by the notebook's schema before anything runs. A rerun on the same folder
skips finished notebooks and resumes the rest.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import yaml

from sdlib import config as cfgmod
from sdlib.settings import REPO_ROOT

NOTEBOOKS = list(cfgmod.EXPERIMENTS)
PARAMS_DIR = REPO_ROOT / "params"
NOTEBOOK_DIR = REPO_ROOT / "notebooks"


class NotebookFailed(RuntimeError):
    """A notebook raised: names it, the cell, the error and the parameters it ran with."""


def resolve(names: list[str]) -> list[str]:
    if names in (["all"], []):
        return NOTEBOOKS
    out = []
    for name in names:
        found = [n for n in NOTEBOOKS if n == name or n.startswith(name)]
        if len(found) != 1:
            raise cfgmod.ConfigError(
                f"notebook {name!r} is not one of {NOTEBOOKS} (or 'all'; "
                f"a unique prefix such as '03' works too)"
            )
        out.append(found[0])
    return out


def presets() -> list[str]:
    return sorted(p.name for p in PARAMS_DIR.iterdir() if p.is_dir())


def notebook_params(name: str, preset: str, root: Path, overrides: dict) -> dict:
    """The preset's parameters for ``name`` with overrides, checked by its schema."""
    path = PARAMS_DIR / preset / f"{name}.yaml"
    if not path.exists():
        raise cfgmod.ConfigError(f"preset {preset!r} has no {path.name}; presets: {presets()}")
    values = yaml.safe_load(path.read_text()) or {}
    schema = cfgmod.EXPERIMENTS[name]
    fields = {f for f in schema.__dataclass_fields__}
    values.update({k: v for k, v in overrides.items() if k in fields})
    values.update(out=str(root), preset=preset)
    try:
        cfgmod.from_dict(schema, values)
    except cfgmod.ConfigError as err:
        raise cfgmod.ConfigError(f"{name} ({path}): {err}") from None
    return values


def run(
    names: list[str], preset: str = "tiny", out: str = "", overrides: dict | None = None
) -> Path:
    """Execute the notebooks ``names`` (or all) at ``preset`` into ``out``; returns it."""
    names, overrides = resolve(names), overrides or {}
    root = Path(out or f"runs/{preset}/{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    known = set().union(*(cfgmod.EXPERIMENTS[n].__dataclass_fields__ for n in names))
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise cfgmod.ConfigError(f"-p {unknown}: no selected notebook has such a parameter")
    params = {n: notebook_params(n, preset, root, overrides) for n in names}  # all before any
    (root / "notebooks").mkdir(parents=True, exist_ok=True)
    for name in names:
        done = root / "notebooks" / f"{name}.done"
        if done.exists():
            print(f"[sdlib run] {name}: finished earlier, skipped")
            continue
        start = time.perf_counter()
        execute(name, root, params[name])
        done.write_text(f"{time.perf_counter() - start:.1f} s\n")
        print(f"[sdlib run] {name}: {time.perf_counter() - start:.0f} s")
    report = write_report(root, names)
    # the tables, in the terminal too (figures: see the report)
    print("\n".join(x for x in report.read_text().splitlines() if not x.startswith("![")))
    print(f"[sdlib run] report with figures: {report}")
    return root


def execute(name: str, root: Path, params: dict) -> None:
    import papermill as pm

    target = root / "notebooks" / f"{name}.ipynb"
    try:
        pm.execute_notebook(
            str(NOTEBOOK_DIR / f"{name}.ipynb"),
            str(target),
            parameters=params,
            kernel_name="python3",
            cwd=str(REPO_ROOT),
            progress_bar=False,
            log_output=False,
        )
    except pm.PapermillExecutionError as err:
        raise NotebookFailed(
            f"notebook {name} failed in cell {err.exec_count} ({err.ename}: {err.evalue}); "
            f"executed copy with the traceback: {target}; parameters: {params}"
        ) from None


def write_report(root: Path, names: list[str]) -> Path:
    """report.md: every table (as markdown) and figure of the finished notebooks."""
    lines = [f"# sdlib report: {root.name}", ""]
    for name in names:
        folder = root / name
        if not folder.exists():
            continue
        lines += [f"## {name}", ""]
        for csv in sorted((folder / "tables").glob("*.csv")):
            frame = pd.read_csv(csv, index_col=0)
            lines += [f"**{csv.stem}**", "", frame.round(3).to_markdown(), ""]
        for png in sorted((folder / "figures").glob("*.png")):
            lines += [f"![{png.stem}]({png.relative_to(root)})", ""]
    path = root / "report.md"
    path.write_text("\n".join(lines))
    return path
