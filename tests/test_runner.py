"""All five notebooks at the smoke preset through papermill, as CI runs them."""

import json
import math
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pandas as pd
import psutil
import pytest

from sdlib import config as cfgmod
from sdlib.runner import NOTEBOOKS, NotebookFailed, preset_values, run
from sdlib.settings import REPO_ROOT

EXPECTED = {  # notebook: {table: columns that must hold finite numbers}
    "00_model_organism": {
        "premise": ["accuracy", "accuracy_lo", "accuracy_hi", "length", "epistemic"],
        "build": ["parameters", "tokens"],
        "checks": ["responses", "checks"],
    },
    "01_context_richness": {
        "table1": ["accuracy", "accuracy_lo", "accuracy_hi", "length", "epistemic", "problems"],
        "selection": ["screen_accuracy", "D_ug pairs", "D_sg pairs"],
    },
    "02_sft_guided_vs_unguided": {
        "table2": ["accuracy", "accuracy_lo", "accuracy_hi", "length"],
        "guided_vs_unguided": ["accuracy"],
        "sft_data": ["pairs", "steps", "tokens"],
    },
    "03_sdpo_vs_grpo": {
        "ood": ["accuracy", "accuracy_lo", "length", "epistemic"],
        "epistemic_word_shift": ["change", "change_lo", "change_hi"],
        "training_curves": ["rollout/reward_mean", "rollout/len_tokens"],
        "ood_over_training": ["accuracy", "length"],
        "specificity": ["change", "rank"],
        "sdpo_vs_grpo": ["accuracy", "accuracy_lo", "length", "epistemic"],
    },
    "04_fixed_vs_moving_teacher": {
        "ood": ["accuracy", "length", "epistemic"],
        "ema_vs_fixed": ["accuracy"],
    },
    "05_task_coverage": {
        "coverage": ["train_score", "train_score_lo", "accuracy", "length"],
        "ood": ["accuracy"],
        "efficiency": ["seeds reached", "correct per 1k tokens", "correct per 1k tokens_lo"],
    },
    "06_mechanism": {
        "effects": ["Δaccuracy", "Δaccuracy_lo", "Δaccuracy_hi", "Δlength", "Δepistemic"],
        "versus_default": ["ΔΔ", "ΔΔ_lo", "ΔΔ_hi", "problems"],
        "verdicts": ["value", "value_lo", "value_hi"],
    },
    "07_remedies": {
        "bench": ["Δaccuracy", "Δaccuracy_lo", "correct per 1k tokens", "late reward"],
        "held_out": ["accuracy", "accuracy_lo", "length", "epistemic"],
        "vs_sdpo": ["accuracy", "length"],
        "efficiency": ["correct per 1k tokens", "start reward", "late reward"],
    },
}
FIGURES = {
    "00_model_organism": ["premise", "length", "epistemic"],
    "01_context_richness": ["conditions"],
    "02_sft_guided_vs_unguided": ["accuracy", "sft_loss"],
    "03_sdpo_vs_grpo": ["curves", "ood_over_training", "word_shift", "specificity", "ood_accuracy"],
    "04_fixed_vs_moving_teacher": [
        "curves",
        "ood_over_training",
        "word_shift",
        "specificity",
        "ood_accuracy",
    ],
    "05_task_coverage": ["coverage", "curves", "ood_over_training"],
    "06_mechanism": ["effects"],
    "07_remedies": ["bench", "curves", "ood_accuracy"],
}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    start = time.perf_counter()
    run(["all"], preset="smoke", out=str(root))
    return root, time.perf_counter() - start


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_tables_and_figures_hold_finite_numbers(smoke_run, name):
    root, _ = smoke_run
    assert (root / "notebooks" / f"{name}.done").exists()
    for table, columns in EXPECTED[name].items():
        frame = pd.read_csv(root / name / "tables" / f"{table}.csv")
        assert len(frame) > 0
        for col in columns or frame.columns:
            assert all(math.isfinite(v) for v in frame[col]), f"{name}/{table}/{col}"
    for fig in FIGURES[name]:
        png = root / name / "figures" / f"{fig}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_report_gathers_every_notebook(smoke_run):
    from sdlib.experiments.results import CAPTION
    from sdlib.report import SECTIONS

    root, _ = smoke_run
    report = (root / "report.md").read_text()
    for name in NOTEBOOKS:
        assert f"## {SECTIONS[name].title}" in report
    assert report.count("![") == sum(len(v) for v in FIGURES.values())
    assert report.count("exceeds noise") + report.count("within noise") > 0  # notes, in words
    # every notebook opens its notes with findings, which open the report; every figure has
    # a caption beside it
    findings = report.split("## Contents")[0]
    assert all(f"[{SECTIONS[name].title}](#{name})" in findings for name in NOTEBOOKS)
    for name, figures in FIGURES.items():
        assert all((root / name / "figures" / f"{f}{CAPTION}").exists() for f in figures)
    # one self-contained html file: every figure embedded, no link to a file beside it
    html = (root / "report.html").read_text()
    assert html.count("src='data:image/png;base64,") == report.count("![")
    assert all(f"<h2>{SECTIONS[name].title}</h2>" in html for name in NOTEBOOKS)
    assert "figures/" not in html


def test_rerun_resumes_finished_notebooks(smoke_run, capsys):
    root, first = smoke_run
    start = time.perf_counter()
    run(["all"], preset="smoke", out=str(root))
    assert capsys.readouterr().out.count("finished earlier, skipped") == len(NOTEBOOKS)
    assert time.perf_counter() - start < first / 4


def test_running_some_notebooks_keeps_the_others_in_the_report_in_study_order(smoke_run):
    from sdlib.report import SECTIONS

    root, _ = smoke_run
    run(["05", "03"], preset="smoke", out=str(root))
    report = (root / "report.md").read_text()
    places = [report.find(f"## {SECTIONS[name].title}") for name in NOTEBOOKS]
    assert min(places) > 0 and places == sorted(places)


def test_a_finished_notebook_reruns_when_its_parameters_change(smoke_run, capsys):
    root, _ = smoke_run
    run(["01"], preset="smoke", out=str(root), overrides={"samples": 3})
    out = capsys.readouterr().out
    assert "parameters changed since it finished" in out and "finished earlier, skipped" not in out
    record = json.loads((root / "notebooks" / "01_context_richness.done").read_text())
    assert record["params"]["samples"] == 3
    run(["01"], preset="smoke", out=str(root), overrides={"samples": 3})
    assert "finished earlier, skipped" in capsys.readouterr().out


def test_shared_runs_are_computed_once(smoke_run):
    root, _ = smoke_run
    # notebook 04's fixed-teacher SDPO run is notebook 03's SDPO run: one folder, not two
    sdpo = sorted(p.name for p in (root / "train").glob("sdpo-*"))
    assert len(sdpo) == len(set(sdpo))
    name = "04_fixed_vs_moving_teacher"
    seeds = cfgmod.from_dict(cfgmod.EXPERIMENTS[name], preset_values(name, "smoke")).seeds
    # 03/04/07 shared, 04's EMA, 05's two sizes and its budget run, 06's four organisms (smoke
    # organisms, where 03 trains the random model, so nothing of 06 is shared here), 07's
    # five remedies
    remedies = len(cfgmod.preset("smoke", "07").remedies)
    assert len(sdpo) == (1 + 1 + 2 + 1 + 4 + remedies) * len(seeds)


def test_an_evaluation_is_found_by_what_it_computes_whatever_its_label(smoke_run):
    root, _ = smoke_run
    # 04 evaluates 03's SDPO adapters as "SDPO fixed": the same work, one folder
    keys = [p.name.rsplit("-", 1)[1] for p in (root / "eval").iterdir()]
    assert len(keys) == len(set(keys))
    assert not list((root / "eval").glob("SDPO fixed*"))


BARS = ("steps:", "evaluate:", "generate:", "Loading weights", "it/s]")


def run_cell_lines(path: Path) -> int:
    """Lines the cell that calls ``<experiment>.run(cfg)`` shows: each line of its stream
    outputs (a bar's every redraw, before), one for any other output."""
    cells = json.loads(path.read_text())["cells"]
    (cell,) = [c for c in cells if c["cell_type"] == "code" and ".run(cfg)" in "".join(c["source"])]
    return sum(
        "".join(o["text"]).replace("\r", "\n").count("\n") if o["output_type"] == "stream" else 1
        for o in cell["outputs"]
    )


def kept_bars(path: Path) -> list[str]:
    """Outputs of an executed notebook that hold a progress bar, as text or as a widget."""
    outputs = [o for c in json.loads(path.read_text())["cells"] for o in c.get("outputs", [])]
    shown = [json.dumps(o) for o in outputs]
    return [o for o in shown if any(b in o for b in BARS) or "widget-view" in o]


# run cells of smoke notebooks held 16-22 lines of bars, organism ones 55-364 outputs
MOST_RUN_CELL_LINES = 10


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_executed_notebooks_keep_no_progress_bars(smoke_run, name):
    root, _ = smoke_run
    executed = root / "notebooks" / f"{name}.ipynb"
    assert kept_bars(executed) == []
    assert run_cell_lines(executed) < MOST_RUN_CELL_LINES
    assert json.loads(executed.read_text())["metadata"]["kernelspec"]["name"] == "sdlib"


def test_a_resumed_notebook_says_what_it_found_instead_of_empty_bars(smoke_run, tmp_path, capfd):
    root, _ = smoke_run
    copy = tmp_path / "moved"  # resumed elsewhere: the shared folder stays as the others read it
    shutil.copytree(root, copy)
    (copy / "notebooks" / "03_sdpo_vs_grpo.done").unlink()
    capfd.readouterr()
    run(["03"], preset="smoke", out=str(copy))
    terminal = capfd.readouterr().err  # the kernel's own stderr: this process's
    found = [x for x in terminal.replace("\r", "\n").splitlines() if " found " in x]
    assert any(x.startswith("evaluate: ") for x in found)
    assert any(x.startswith(("grpo: ", "sdpo: ")) for x in found)
    assert "0/0" not in terminal and "evaluate: 0" not in terminal  # no bar with nothing to do
    executed = copy / "notebooks" / "03_sdpo_vs_grpo.ipynb"
    assert kept_bars(executed) == [] and run_cell_lines(executed) < MOST_RUN_CELL_LINES


def test_notebooks_run_two_at_once_and_share_their_runs(tmp_path, capsys):
    root = run(["03", "04"], preset="smoke", out=str(tmp_path), jobs=2)
    out = capsys.readouterr().out
    for name in ("03_sdpo_vs_grpo", "04_fixed_vs_moving_teacher"):
        assert (root / "notebooks" / f"{name}.done").exists()
        assert f"{name}: running (output in {root / 'notebooks' / name}.log)" in out
        log = (root / "notebooks" / f"{name}.log").read_text()
        assert "steps:" in log or "evaluate:" in log  # the kernel's bars: in its log only
        assert kept_bars(root / "notebooks" / f"{name}.ipynb") == []
    # 04's fixed-teacher runs are 03's SDPO runs, trained once though both asked at once
    name = "04_fixed_vs_moving_teacher"
    seeds = len(cfgmod.from_dict(cfgmod.EXPERIMENTS[name], preset_values(name, "smoke")).seeds)
    assert len(list((root / "train").glob("sdpo-*"))) == 2 * seeds
    # each notebook's kernel ended with its notebook: none is left running
    kernels = [
        c
        for c in psutil.Process().children(recursive=True)
        if "ipykernel_launcher" in " ".join(c.cmdline())
    ]
    assert kernels == []
    with pytest.raises(cfgmod.ConfigError, match="jobs = 0"):
        run(["03"], preset="smoke", out=str(tmp_path), jobs=0)


def test_parallel_notebooks_start_in_order_and_02_only_after_01():
    """(01 is slow here: 02 must wait for it even when a worker is free.)"""
    from sdlib.runner import run_parallel

    events, lock, running = [], threading.Lock(), []

    def fake(name):
        with lock:
            running.append(name)
            events.append(("start", name, len(running)))
        time.sleep({"01_context_richness": 0.3}.get(name, 0.1))
        with lock:
            running.remove(name)
            events.append(("end", name))

    run_parallel(NOTEBOOKS, 2, fake)
    starts = [e[1] for e in events if e[0] == "start"]
    assert starts[:5] == [
        "03_sdpo_vs_grpo",
        "06_mechanism",
        "07_remedies",
        "05_task_coverage",
        "01_context_richness",
    ]
    assert max(e[2] for e in events if e[0] == "start") == 2  # never more than 2 at once
    assert events.index(("end", "01_context_richness")) < [e[:2] for e in events].index(
        ("start", "02_sft_guided_vs_unguided")
    )
    with pytest.raises(ZeroDivisionError):  # a failure reaches the caller
        run_parallel(["03_sdpo_vs_grpo", "04_fixed_vs_moving_teacher"], 2, lambda n: 1 / 0)


def test_bad_parameter_is_named_before_anything_runs(tmp_path):
    with pytest.raises(cfgmod.ConfigError, match="03_sdpo_vs_grpo .*eval_k = 0"):
        run(["03"], preset="smoke", out=str(tmp_path), overrides={"eval_k": 0})
    assert not (tmp_path / "notebooks").exists()


def test_failure_names_notebook_cell_and_parameters(tmp_path):
    with pytest.raises(
        NotebookFailed,
        match=r"notebook 05_task_coverage failed in cell \d+ "
        r"\(ValueError: sizes = \[1, 999\]",
    ):
        run(["05"], preset="smoke", out=str(tmp_path), overrides={"sizes": [1, 999]})
    assert (tmp_path / "notebooks" / "05_task_coverage.ipynb").exists()
    assert not (tmp_path / "notebooks" / "05_task_coverage.done").exists()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_jupyterlab_serves_the_notebooks_and_the_kernel(tmp_path):
    port, token = free_port(), "sdlib-test"
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        f"--port={port}",
        "--ServerApp.ip=127.0.0.1",
        "--allow-root",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={REPO_ROOT}",
    ]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}/api"
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/status?token={token}", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        listing = pd.read_json(urllib.request.urlopen(f"{base}/contents/notebooks?token={token}"))[
            "content"
        ]
        names = {item["name"] for item in listing}
        assert {f"{n}.ipynb" for n in NOTEBOOKS} <= names
        specs = pd.read_json(
            urllib.request.urlopen(f"{base}/kernelspecs?token={token}"), typ="series"
        )
        kernels = specs["kernelspecs"]
        # `make setup` registers the project's environment as the "sdlib" kernel
        assert "sdlib" in kernels, "run `make setup` to register the sdlib kernel"
        argv = kernels["sdlib"]["spec"]["argv"]
        assert Path(argv[0]).exists() and "ipykernel_launcher" in argv
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_experiment_evaluations_render_the_few_shot_turn(tmp_path, monkeypatch):
    from sdlib.config import OnPolicyConfig, from_dict
    from sdlib.datasets import load_benchmarks
    from sdlib.experiments import evaluation
    from sdlib.prompts import FEW_SHOT

    seen = []

    class Recorder:
        def __init__(self, cfg, adapter):
            pass

        def generate(self, prompts, n, sampling, keys=None):
            seen.extend(prompts)
            raise KeyboardInterrupt  # the prompts are all this test needs

    monkeypatch.setattr(evaluation, "LazyBackend", Recorder)
    for few_shot in (True, False):
        cfg = from_dict(
            OnPolicyConfig,
            {"model": "tiny-random:2x64", "out": str(tmp_path), "few_shot": few_shot},
        )
        with pytest.raises(KeyboardInterrupt):
            evaluation.evaluate_policy(cfg, "base", load_benchmarks(["synthetic:addition:1:2"]))
        assert (FEW_SHOT[1] in seen[-1]) is few_shot


def test_plan_counts_what_a_run_samples_and_trains(capsys):
    from sdlib.runner import plan

    table = plan(["03"], preset="smoke")
    # smoke 03: GRPO and SDPO, 2 steps x 2 problems x 4 rollouts each; base and each final
    # adapter evaluated on 3 problems x 2 samples (checkpoints every 5 steps: the final only)
    row = table.loc["03_sdpo_vs_grpo"]
    assert row["rollouts"] == 6 + 2 * (2 * 2 * 4 + 6)
    assert row["generated tokens"] == row["rollouts"] * 8  # every response at its cap
    assert row["trained tokens"] == 2 * 2 * 2 * 4 * 8
    assert "GPU-hours" in capsys.readouterr().out
    # smoke 05: sizes 1 and 4 for both algos, then |D| = 1 again under a 4-token budget, whose
    # final adapter alone is evaluated; 1 seed
    row = plan(["05"], preset="smoke").loc["05_task_coverage"]
    full, cut = 2 * 2 * 4 * 8, 2 * 2 * 4 * 4
    assert row["generated tokens"] == 6 * 8 + 2 * 2 * (full + 6 * 8) + 2 * (cut + 6 * 8)


def test_a_run_says_where_its_time_went(smoke_run):
    from sdlib.runner import time_table

    root, _ = smoke_run
    phases = json.loads((root / "03_sdpo_vs_grpo" / "timings.json").read_text())
    assert phases["train: update"] > 0 and phases["evaluate"] > 0 and phases["load model"] > 0
    assert "kernel start, papermill" in (root / "timings.md").read_text()
    table = time_table(root, NOTEBOOKS)
    assert list(table.index) == [*NOTEBOOKS, "total"]
    parts = table.drop(columns="wall").loc[NOTEBOOKS]
    assert (parts.sum(axis=1) - table.loc[NOTEBOOKS, "wall"]).abs().max() < 1e-6


def test_time_table_splits_each_notebook_into_start_cells_and_phases(tmp_path):
    from sdlib.runner import time_table

    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "01_context_richness.done").write_text('{"seconds": 10.0}')
    cells = [{"metadata": {"papermill": {"duration": d}}} for d in (1.0, None, 3.0)]
    (tmp_path / "notebooks" / "01_context_richness.ipynb").write_text(json.dumps({"cells": cells}))
    (tmp_path / "01_context_richness").mkdir()
    phases = {"evaluate": 2.0, "other": 0.5}
    (tmp_path / "01_context_richness" / "timings.json").write_text(json.dumps(phases))
    table = time_table(tmp_path, ["00_model_organism", "01_context_richness"])  # 00: not run
    row = table.loc["01_context_richness"]
    assert list(table.index) == ["01_context_richness", "total"]
    built = time_table(tmp_path, ["01_context_richness"], built=30.0)
    assert list(built.index) == ["build organisms", "01_context_richness", "total"]
    assert built.loc["total", "wall"] == 40 and built.loc["total", "build organism"] == 30
    assert (row["wall"], row["kernel start, papermill"], row["imports, display"]) == (10, 6, 1.5)
    assert (row["evaluate"], row["other"]) == (2.0, 0.5)
