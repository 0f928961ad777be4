"""Notebook 07, the remedies proposed since the study, compared on one bench.

GRPO, SDPO and each remedy (``RemediesConfig.remedies``: TrainConfig options of the one
SDPO loss, ``sdlib.train.sdpo``) trained from the same base model on the same problems for
the same steps and seeds, evaluated on the same held-out problems and samples, then:
    held-out accuracy, length and epistemic words of every final model, paired against the
    base model, against SDPO and against GRPO (95% intervals over problems and samples,
    seeds nested), over the evaluation sets together and per set
    in-domain efficiency (``coverage.efficiency_row``): correct responses per 1k generated
    tokens over training, the training reward over the last half of the steps, and where
    the untrained policy started (intervals across seeds: runs are not paired)
    one figure placing every method by efficiency against held-out accuracy retained

The verdicts follow rules fixed before any run (``verdicts``): a method keeps reasoning
when its held-out accuracy is not below the base model's beyond noise; it keeps the
efficiency when its correct responses per 1k tokens lie above GRPO's beyond noise (SDPO's
gain, where SDPO has one to keep).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sdlib import plots
from sdlib.config import RemediesConfig
from sdlib.datasets import load_benchmarks
from sdlib.experiments import tables, training
from sdlib.experiments.coverage import efficiency_row, span
from sdlib.experiments.evaluation import checkpoint_evals, evaluate_seeds
from sdlib.experiments.results import Results, timed

NAME = "07_remedies"
CURVES = ["rollout/reward_mean", "rollout/len_tokens", "rollout/epi_total", "train/entropy"]
HELD_OUT = "held-out (all sets)"
CAPTIONS = {
    "bench": "Each method's in-domain efficiency (correct responses per 1k generated tokens "
    "over training, 95% interval across seeds) against its held-out accuracy minus the base "
    "model's (paired, 95% interval). Up is reasoning kept, right is efficiency; the study's "
    "SDPO sits right and low, GRPO left and level. A remedy that works sits up and right.",
    "curves": "Training curves, mean over seeds with a 95% band: reward, response length, "
    "epistemic words and the student's token entropy, per step. Look for which remedies "
    "follow SDPO's fall in length and epistemic words and which follow GRPO.",
    "ood_accuracy": "Held-out accuracy of every final model per evaluation set, with 95% "
    "intervals; the base model's bar is where every method started.",
}


def runs_of(cfg: RemediesConfig) -> dict[str, list]:
    """label -> the TrainConfigs (one per seed): GRPO, SDPO (notebook 03's runs, the same
    keys), then each remedy as SDPO with its options."""
    runs = {
        "GRPO": training.configs(cfg, "grpo", cfg.data, cfg.train, cfg.grpo),
        "SDPO": training.configs(cfg, "sdpo", cfg.data, cfg.train, cfg.sdpo),
    }
    for label, options in cfg.remedies.items():  # a policy term takes GRPO's knobs, lr SDPO's
        runs[label] = training.configs(
            cfg, "sdpo", cfg.data, cfg.train, cfg.grpo, cfg.sdpo, options
        )
    return runs


@timed
def run(cfg: RemediesConfig) -> Results:
    res = Results(Path(cfg.out) / NAME)
    subtitle = f"{cfg.model} · preset {cfg.preset} · seeds {cfg.seeds}"
    trained = {label: training.train_seeds(cfg, tcfgs) for label, tcfgs in runs_of(cfg).items()}
    benchmarks = load_benchmarks(cfg.eval_data, cfg.eval_limit)
    evals = {"base": evaluate_seeds(cfg, "base", benchmarks)}
    for label, runs in trained.items():
        points = checkpoint_evals(cfg, label, runs, benchmarks, evals["base"])
        evals[label] = points[max(points)]  # the final checkpoint
    pooled = {label: e.assign(benchmark=HELD_OUT) for label, e in evals.items()}
    methods = list(trained)
    held = res.table("held_out", tables.by_benchmark(pooled))
    res.table("vs_sdpo", tables.by_benchmark({m: pooled[m] for m in methods}, base="SDPO"))
    res.table("vs_grpo", tables.by_benchmark({m: pooled[m] for m in methods}, base="GRPO"))
    ood = res.table("ood", tables.by_benchmark(evals))
    spent = {label: efficiency_row(runs, cfg.reach) for label, runs in trained.items()}
    efficiency = res.table("efficiency", pd.DataFrame.from_dict(spent, orient="index"))
    bench = res.table("bench", bench_table(held, efficiency))
    curves = res.table(
        "training_curves",
        tables.curves({label: [t.metrics for t in ts] for label, ts in trained.items()}, CURVES),
    )
    figures = {
        "bench": plots.remedy_bench(bench, subtitle),
        "curves": plots.training_curves(curves, CURVES, subtitle, "Training, every method"),
        "ood_accuracy": plots.accuracy_bars(ood, subtitle, "Held-out accuracy, final models"),
    }
    for name, fig in figures.items():
        res.figure(name, fig, CAPTIONS[name])
    res.notes(notes(res.tables, cfg), findings=findings(res.tables))
    return res


def bench_table(held: pd.DataFrame, efficiency: pd.DataFrame) -> pd.DataFrame:
    """Rows (method): held-out accuracy minus the base model's (pooled sets, paired) and
    the in-domain efficiency and late training reward (across seeds)."""
    diff = held.xs(HELD_OUT, level="benchmark").drop(index="base")
    keep = [c for c in diff.columns if c.startswith("Δaccuracy")]
    keep += [*tables.SIZES]
    spent = [
        c for c in efficiency.columns if c.startswith(("correct per 1k tokens", "late reward"))
    ]
    return diff[keep].join(efficiency[spent]).rename_axis("method")


def _apart(a: pd.Series, b: pd.Series, key: str) -> int:
    """+1 when ``a``'s interval of ``key`` lies above ``b``'s, -1 below, 0 overlapping."""
    if a[f"{key}_lo"] > b[f"{key}_hi"]:
        return 1
    return -1 if a[f"{key}_hi"] < b[f"{key}_lo"] else 0


def verdicts(found: dict) -> dict[str, str]:
    """Each method's verdict in words, by the rules fixed before the runs: reasoning is
    kept when the held-out accuracy minus the base model's has its interval's top at or
    above 0; the efficiency is kept when correct per 1k tokens lies above GRPO's beyond
    noise (across seeds), with the share of SDPO's gain over GRPO that it keeps. Where
    SDPO itself is not above GRPO there is no gain to keep, and the verdict says so."""
    bench, key = found["bench"], "correct per 1k tokens"
    grpo, sdpo = bench.loc["GRPO"], bench.loc["SDPO"]
    gain = _apart(sdpo, grpo, key) > 0
    out = {}
    for method, row in bench.iterrows():
        if method == "GRPO":
            continue
        reasoning = "keeps" if row["Δaccuracy_hi"] >= 0 else "loses"
        said = f"{reasoning} held-out accuracy"
        if method == "SDPO":
            above = "above GRPO's beyond noise (the gain to keep)" if gain else "not above GRPO's"
            out[method] = f"{said}, its efficiency {above}"
            continue
        if not gain:
            out[method] = f"{said} (SDPO is not more efficient than GRPO here: no gain to keep)"
            continue
        share = (row[key] - grpo[key]) / (sdpo[key] - grpo[key])
        kept = "keeps" if _apart(row, grpo, key) > 0 else "does not keep"
        out[method] = f"{said}, {kept} the efficiency ({share:.0%} of SDPO's gain over GRPO)"
    return out


def findings(found: dict) -> list[str]:
    """The headline of notebook 07: held-out accuracy of each remedy minus SDPO and minus
    GRPO, each method's efficiency, and each method's verdict."""
    vs_sdpo, vs_grpo, bench = found["vs_sdpo"], found["vs_grpo"], found["bench"]
    remedies = [m for m in bench.index if m not in ("GRPO", "SDPO")]
    lines = [
        tables.finding(
            "Each remedy minus SDPO, held-out accuracy",
            {m: tables.rows(vs_sdpo, m)[HELD_OUT] for m in remedies},
            "Δaccuracy",
        ),
        tables.finding(
            "Each remedy minus GRPO, held-out accuracy",
            {m: tables.rows(vs_grpo, m)[HELD_OUT] for m in remedies},
            "Δaccuracy",
        ),
    ]
    seeds = int(bench["seeds"].iloc[0])
    lines.append(
        f"In-domain efficiency, correct responses per 1k generated tokens over training "
        f"(95% intervals across {seeds} seeds): "
        + ", ".join(
            f"{tables.markdown_text(m)} {span(r, 'correct per 1k tokens', 2)}"
            for m, r in bench.iterrows()
        )  # fmt: skip
        + "."
    )
    lines.append(
        "Verdicts (rules fixed before the runs): "
        + "; ".join(f"{tables.markdown_text(m)}: {v}" for m, v in verdicts(found).items())
        + "."
    )
    return [line for line in lines if line]


def notes(found: dict, cfg: RemediesConfig) -> list[str]:
    """Every paired difference in words, then each method's efficiency."""
    lines = ["Each method against the base model, held-out sets together:"]
    lines += [f"- {line}" for line in tables.notes(found["held_out"])]
    lines += ["", "Each method against SDPO:"]
    lines += [f"- {line}" for line in tables.notes(found["vs_sdpo"])]
    lines += ["", "Each method against GRPO:"]
    lines += [f"- {line}" for line in tables.notes(found["vs_grpo"])]
    lines += ["", f"In-domain efficiency (intervals across {len(cfg.seeds)} seeds, not paired):"]
    for method, row in found["efficiency"].iterrows():
        lines.append(
            f"- {tables.markdown_text(method)}: {span(row, 'correct per 1k tokens', 2)} correct "
            f"per 1k generated tokens; training reward {span(row, 'late reward', 2)} over the "
            f"last half of the steps (start {row['start reward']:.2f}); "
            f"{int(row['seeds reached'])}/{int(row['seeds'])} seeds reached {cfg.reach}"
        )
    return lines
