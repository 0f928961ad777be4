"""``sdlib run``: execute experiment notebooks through papermill into one run folder.

    runs/<preset>/<timestamp>/
        notebooks/<name>.ipynb       executed copies (with outputs); <name>.done when finished
        <name>/tables/*.csv, <name>/figures/*.png
        train/, eval/                content-addressed training and evaluation runs
        report.md, report.html       the findings, then a section per notebook in the
                                     study's order (sdlib.report; the html one file)

Parameters come from ``params/<preset>/<name>.yaml``, then ``-p key value`` overrides, and
are validated by the notebook's schema before anything runs. A rerun on the same folder
skips the notebooks that finished with the same parameters (``<name>.done`` records them),
reruns those whose parameters changed, and resumes the rest; training and evaluation runs
that did not change are found on disk either way.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pandas as pd

from sdlib import config as cfgmod
from sdlib.config import PARAMS_DIR, defines, preset_values, presets  # noqa: F401 - re-exported
from sdlib.experiments.results import TIMINGS
from sdlib.progress import TEXT_PROGRESS
from sdlib.report import write_report
from sdlib.runfolder import WAIT_FOR_LOCKS, RunFolder, write_atomic
from sdlib.settings import REPO_ROOT

NOTEBOOKS = list(cfgmod.EXPERIMENTS)
NOTEBOOK_DIR = REPO_ROOT / "notebooks"


class NotebookFailed(RuntimeError):
    """A notebook raised: names it, the cell, the error and the parameters it ran with."""


def resolve(names: list[str], preset: str | None = None) -> list[str]:
    """Notebook names from names or unique prefixes; "all" is every notebook ``preset``
    defines (notebook 06 runs on organisms only, so the tiny and paper presets leave it out)."""
    if names in (["all"], []):
        return NOTEBOOKS if preset is None else [n for n in NOTEBOOKS if defines(preset, n)]
    return [cfgmod.notebook_name(name) for name in names]


def notebook_params(name: str, preset: str, root: Path, overrides: dict) -> dict:
    """The preset's parameters for ``name`` with overrides (those of its schema), checked
    by its schema, with the schema's defaults filled in (``config.preset``)."""
    fields = set(cfgmod.EXPERIMENTS[name].__dataclass_fields__) - {"out", "preset"}
    cfg = cfgmod.preset(preset, name, root, **{k: v for k, v in overrides.items() if k in fields})
    # every field, so what a preset leaves out is the schema's default, not whatever the
    # notebook's parameters cell happens to hold
    return dict(vars(cfg))


def finished_params(done: Path) -> dict | None:
    """The parameters a notebook finished with (``None``: it has not finished, or its
    record is unreadable, so it runs again)."""
    try:
        return json.loads(done.read_text())["params"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run(
    names: list[str],
    preset: str = "organism",
    out: str = "",
    overrides: dict | None = None,
    jobs: int = 1,
) -> Path:
    """Execute the notebooks ``names`` (or all) at ``preset`` into ``out``; returns it.

    ``jobs > 1`` runs that many notebooks at once, each kernel on ``cores // jobs`` threads
    and its output in ``notebooks/<name>.log`` (a line per minute here says where each one
    is). An organism the notebooks name is built first, on every core (minutes, once). Two
    notebooks that need one shared run wait for each other instead of training it twice.
    """
    names, overrides = resolve(names, preset), overrides or {}
    if not isinstance(jobs, int) or jobs < 1:
        raise cfgmod.ConfigError(f"jobs = {jobs!r}: give a positive whole number (1: in turn)")
    root = Path(out or f"runs/{preset}/{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    check_overrides(names, overrides)
    params = {n: notebook_params(n, preset, root, overrides) for n in names}  # all before any
    started = time.perf_counter()
    preflight(params)  # builds an organism a notebook names, to read its context length
    with RunFolder(root).lock():
        (root / "notebooks").mkdir(parents=True, exist_ok=True)
        build_organisms(params)
        built = time.perf_counter() - started
        step = _Step(names, root, params, started)
        if jobs == 1:
            for name in names:
                step(name)
        else:
            _in_parallel(step, names, jobs)
        md, html = write_report(root, NOTEBOOKS)  # every notebook finished here, in order
        spent = time_table(root, names, built)
        write_atomic(root / "timings.md", spent.to_markdown(floatfmt=".0f") + "\n")
    # the tables, in the terminal too (figures: see the report)
    print("\n".join(x for x in md.read_text().splitlines() if not x.startswith(("![", "<a id="))))
    print(f"[sdlib run] report: {md} and {html} (one file, figures inside)")
    print(
        f"[sdlib run] where the time went, seconds per notebook ({jobs} at a time; the run "
        f"took {_clock(started)}; also in {root / 'timings.md'}):"
    )
    print(spent.to_markdown(floatfmt=".0f"))
    return root


def time_table(root: Path, names: list[str], built: float = 0.0) -> pd.DataFrame:
    """Seconds per notebook and phase: its wall time (``<name>.done``), the kernel's start
    and papermill (wall minus the cells' own time), imports and display (cells minus the
    experiment's phases), and the experiment's phases (``timings.json``, ``sdlib.clock``);
    first, when it took a while, the organisms' build (``built`` seconds)."""
    rows = {"build organisms": {"wall": built, "build organism": built}} if built > 1 else {}
    for name in names:
        done = root / "notebooks" / f"{name}.done"
        try:
            wall = float(json.loads(done.read_text())["seconds"])
            cells = json.loads((root / "notebooks" / f"{name}.ipynb").read_text())["cells"]
            ran = sum(c.get("metadata", {}).get("papermill", {}).get("duration") or 0
                      for c in cells)  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not finished: nothing to say
        timings = root / name / TIMINGS
        phases = json.loads(timings.read_text()) if timings.exists() else {}
        rows[name] = {
            "wall": wall,
            "kernel start, papermill": wall - ran,
            "imports, display": ran - sum(phases.values()),
            **phases,
        }
    table = pd.DataFrame.from_dict(rows, orient="index").fillna(0.0)
    if len(table):
        table.loc["total"] = table.sum()
    return table


def check_overrides(names: list[str], overrides: dict) -> None:
    """Refuse a ``-p`` name no selected notebook has."""
    known = set().union(*(cfgmod.EXPERIMENTS[n].__dataclass_fields__ for n in names))
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise cfgmod.ConfigError(f"-p {unknown}: no selected notebook has such a parameter")


def preflight(params: dict) -> None:
    """What can fail without the weights, checked for every notebook before the first one
    starts: the device, each model's existence and context, each problem set."""
    from sdlib.datasets import check_specs
    from sdlib.models import check_limits
    from sdlib.settings import check_device

    for name, p in params.items():
        try:
            check_device(p["device"])
            check_limits(p["model"], p["max_new_tokens"])
            check_specs([*p.get("data", []), *p.get("eval_data", [])])
        except (OSError, ValueError) as err:
            raise type(err)(f"{name}: {err}") from None


class _Step:
    """Runs one notebook of a run (or skips it, finished with the same parameters)."""

    def __init__(self, names, root: Path, params: dict, started: float):
        self.names, self.root, self.params, self.started = names, root, params, started

    def __call__(self, name: str, log: Path | None = None) -> None:
        i, n = self.names.index(name) + 1, len(self.names)
        done = self.root / "notebooks" / f"{name}.done"
        before = finished_params(done)
        if before == self.params[name]:
            print(f"[sdlib run] {i}/{n} {name}: finished earlier, skipped", flush=True)
            return
        if before is not None:
            print(f"[sdlib run] {i}/{n} {name}: parameters changed since it finished")
        where = f"output in {log}" if log else "cells and the bars inside them follow"
        print(f"[sdlib run] {i}/{n} {name}: running ({where})", flush=True)
        start = time.perf_counter()
        execute(name, self.root, self.params[name], log)
        record = {"seconds": round(time.perf_counter() - start, 1), "params": self.params[name]}
        write_atomic(done, json.dumps(record, indent=1) + "\n")
        print(
            f"[sdlib run] {i}/{n} {name}: done in {_clock(start)} "
            f"(run so far {_clock(self.started)})",
            flush=True,
        )


# a notebook that reads another's output starts only once that one has finished
NEEDS = {"02_sft_guided_vs_unguided": "01_context_richness"}  # 01 writes D_ug and D_sg
# the order notebooks start in when several run at once: the long ones first (05 and 06
# reach the runs they share with 03 after their own, by when 03 has trained them), then the
# short ones so that the two workers end together, 02 after 01 (organism preset, one core
# each: 03 3.4 min, 05 4.4, 01 0.7, 04 1.4, 00 0.5, 02 0.9); any other notebook after these
START_ORDER = [
    "03_sdpo_vs_grpo",
    "06_mechanism",
    "07_remedies",
    "05_task_coverage",
    "01_context_richness",
    "04_fixed_vs_moving_teacher",
    "00_model_organism",
    "02_sft_guided_vs_unguided",
]


def build_organisms(params: dict) -> None:
    """Build (or find) every organism the notebooks' ``model`` names, before they start:
    otherwise each would wait for the first to build it, on one core."""
    from sdlib.organism.config import variant_spec

    organisms = [p for p in params.values() if str(p.get("model", "")).startswith("organism")]
    specs = sorted(
        {p["model"] for p in organisms}
        | {variant_spec(p["model"], v) for p in organisms for v in p.get("variants", [])}
    )
    if not specs:
        return
    from sdlib.organism.build import build

    for spec in specs:
        print(f"[sdlib run] organism {spec}: {build(spec)}", flush=True)


KERNEL_GRACE_S = 60.0  # after Ctrl-C, how long the running kernels get to stop


def _stop_kernels(threads: list[threading.Thread]) -> None:
    """After Ctrl-C: kernels run in sessions of their own, so the signal never reached them.
    Interrupt them and wait for their cells to end, so that nothing writes to the run folder
    once its lock is released (killed if they outlast KERNEL_GRACE_S)."""
    _signal_children(signal.SIGINT)
    for t in threads:
        t.join(KERNEL_GRACE_S)
    if any(t.is_alive() for t in threads):
        _signal_children(signal.SIGKILL)
        for t in threads:
            t.join()


def _signal_children(signum: int) -> None:
    """Send ``signum`` to this process's children (the notebooks' kernels; the grader's
    worker ignores SIGINT)."""
    import psutil

    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            child.send_signal(signum)


def run_parallel(names: list[str], jobs: int, run_one) -> None:
    """``run_one(name)`` for every name, ``jobs`` at a time, in ``START_ORDER``, each one
    starting only once the notebook it ``NEEDS`` (if selected) has finished. The first
    failure stops new starts and is raised once the running ones have ended."""
    rank = {n: i for i, n in enumerate(START_ORDER)}
    pending = sorted(names, key=lambda n: rank.get(n, len(rank)))  # stable: study order
    done: set[str] = set()
    errors: list[BaseException] = []
    cond = threading.Condition()

    def ready() -> str | None:
        return next((n for n in pending if NEEDS.get(n) not in set(names) - done), None)

    def worker() -> None:
        while True:
            with cond:
                while pending and not errors and (name := ready()) is None:
                    cond.wait()  # what is left waits for a running notebook
                if not pending or errors:
                    return
                pending.remove(name)
            try:
                run_one(name)
            except BaseException as err:  # noqa: BLE001 - re-raised below, in the caller
                errors.append(err)
            with cond:
                done.add(name)
                cond.notify_all()

    threads = [threading.Thread(target=worker) for _ in range(min(jobs, len(names)))]
    for t in threads:
        t.start()
    try:
        # timed waits: a Ctrl-C the OS delivers to a worker thread is only acted on when the
        # main thread runs Python again, which a plain join() would delay to the end
        while any(t.is_alive() for t in threads):
            time.sleep(0.2)
    except KeyboardInterrupt:
        with cond:
            errors.append(KeyboardInterrupt())  # no new starts
            cond.notify_all()
        _stop_kernels(threads)
        raise
    if errors:
        raise errors[0]


def _in_parallel(step: _Step, names: list[str], jobs: int) -> None:
    """``step`` each notebook, ``jobs`` at a time, kernels on their share of the cores."""
    logs = {n: step.root / "notebooks" / f"{n}.log" for n in names}
    env = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs)), WAIT_FOR_LOCKS: "1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernels inherit them
    stop = threading.Event()
    watcher = threading.Thread(target=_report_every_minute, args=(logs, stop), daemon=True)
    watcher.start()
    try:
        run_parallel(names, jobs, lambda name: step(name, logs[name]))
    finally:
        stop.set()
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def _report_every_minute(logs: dict[str, Path], stop: threading.Event) -> None:
    """A line per running notebook every minute: the last thing its log shows."""
    while not stop.wait(60):
        for name, log in logs.items():
            if log.exists() and not log.with_suffix(".done").exists():
                print(f"[sdlib run]   {name}: {_last_line(log)}", flush=True)


def _last_line(log: Path) -> str:
    """The last line of ``log``; of a progress bar redrawn with carriage returns, its
    latest state."""
    with log.open("rb") as f:
        f.seek(max(0, log.stat().st_size - 4096))
        text = f.read().decode(errors="replace")
    lines = [x for x in text.replace("\r", "\n").splitlines() if x.strip()]
    return lines[-1].strip() if lines else "(starting)"


def plan(names: list[str], preset: str, overrides: dict | None = None, mean_response=None):
    """Print what running ``names`` at ``preset`` costs (``sdlib.plan``); run nothing."""
    from sdlib import plan as cost
    from sdlib.datasets import load_benchmarks

    names, rows = resolve(names, preset), {}
    check_overrides(names, overrides or {})
    if mean_response is not None and not (math.isfinite(mean_response) and mean_response > 0):
        raise cfgmod.ConfigError(
            f"--mean-response {mean_response}: give a positive number of tokens"
        )
    device, peak = cost.device_peak()
    for name in names:
        values = notebook_params(name, preset, Path("plan"), overrides or {})
        cfg = cfgmod.from_dict(cfgmod.EXPERIMENTS[name], values)
        sets = load_benchmarks(cfg.eval_data, cfg.eval_limit)
        c = cost.notebook_cost(name, cfg, sum(map(len, sets.values())), mean_response)
        rows[name] = {"rollouts": c.rollouts, "generated tokens": c.generated,
                      "trained tokens": c.trained,
                      "GPU-hours": c.hours(cost.model_params(cfg.model), peak)}  # fmt: skip
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.loc["total"] = table.sum()
    length = f"{mean_response:g}-token responses" if mean_response else "every response at its cap"
    print(
        f"[sdlib run --plan] preset {preset}, {length}; {device}, generation at "
        f"{cost.GEN_UTILISATION:.0%} and training at {cost.TRAIN_UTILISATION:.0%} of peak"
    )
    print(table.to_markdown(floatfmt=",.0f"))
    return table


def _clock(start: float) -> str:
    seconds = int(time.perf_counter() - start)
    return f"{seconds // 60} min {seconds % 60:02d} s"


# The kernel papermill runs notebooks in: jupyter_client's name for the interpreter that
# asks (sys.executable, so this environment's), there wherever ipykernel is installed. The
# notebooks name "sdlib", the kernel `make setup` registers for JupyterLab, which a machine
# set up some other way lacks.
KERNEL = "python3"


def _kernel_manager_class(stderr):
    """A kernel manager class whose kernels start with ``stderr`` as their own stderr, where
    their progress bars go (``sdlib.progress``). Passed as a class, not an instance, so that
    papermill's client owns the manager and shuts the kernel down when the notebook ends (a
    manager handed in is left running: kernels would pile up, and outlive a Ctrl-C)."""
    from jupyter_client.manager import AsyncKernelManager

    class Manager(AsyncKernelManager):
        async def start_kernel(self, **kw):
            return await super().start_kernel(**kw, stderr=stderr)

    return Manager


def execute(name: str, root: Path, params: dict, log: Path | None = None) -> None:
    """Run one notebook through papermill, showing its cell progress and the kernel's
    output as it runs, or writing them to ``log``. sdlib's bars go to the kernel's own
    stderr (``sdlib.progress``), the same terminal or ``log``, and not into the executed
    copy, whose cells keep one output per stream (``coalesce_streams``)."""
    import papermill as pm

    os.environ[TEXT_PROGRESS] = "1"  # the kernel inherits it
    target = root / "notebooks" / f"{name}.ipynb"
    with contextlib.ExitStack() as stack:
        stream = sys.stdout if log is None else stack.enter_context(log.open("w"))
        own = {} if log is None else {"kernel_manager_class": _kernel_manager_class(stream)}
        try:
            pm.execute_notebook(
                str(NOTEBOOK_DIR / f"{name}.ipynb"),
                str(target),
                parameters=params,
                kernel_name=KERNEL,
                **own,
                cwd=str(REPO_ROOT),
                progress_bar=log is None,
                stdout_file=stream,
                stderr_file=sys.stderr if log is None else stream,
                coalesce_streams=True,
            )
        except pm.PapermillExecutionError as err:
            raise NotebookFailed(
                f"notebook {name} failed in cell {err.exec_count} ({err.ename}: {err.evalue}); "
                f"executed copy with the traceback: {target}; parameters: {params}"
            ) from None
