"""Notebook 06, the mechanism tested causally: notebook 03's protocol (GRPO and SDPO, the
same steps, seeds, problems and evaluation) on organisms that differ from the default in
one property each (``sdlib.organism.config.VARIANTS``).

The study's account: with a correct solution in context the teacher answers confidently,
so SDPO moves the student towards confident, unchecked answers; where checking is what
solves unseen problems, held-out accuracy falls. Each variant removes one link:
    silent      the same searches, hedged with no epistemic word
    decorative  checks that compute nothing, so searching cannot pay
    checking    a teacher that still verifies the answer with a full trace in context
``PREDICTIONS`` states, per variant, what the account predicts for SDPO minus GRPO (held
out) and for that difference against the default organism's; ``verdicts`` compares them
with the results, agreeing or not. The tables:
    behaviour   each organism in notebook 00's terms, from its premise gate: search minus
                direct accuracy per family, how often free replies search, the epistemic
                words of free replies, and the teacher's replies with a full trace in context
    effects     SDPO minus GRPO per organism (final adapters, held-out problems), paired
    versus_default  that difference on each variant minus the default's, paired over the
                same seeds, problems and sample slots (a difference in differences)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from sdlib import plots, stats
from sdlib.config import MechanismConfig
from sdlib.datasets import load_benchmarks
from sdlib.experiments import tables, training
from sdlib.experiments.evaluation import evaluate_seeds
from sdlib.experiments.results import Results, timed
from sdlib.models import local_folder
from sdlib.organism import build
from sdlib.organism.config import variant_spec

NAME = "06_mechanism"
MEASURES = {"accuracy": "correct", "length": "len_tokens", "epistemic": "epi_total"}
POOLED = "held-out, all families"
CAPTIONS = {
    "effects": "SDPO minus GRPO on each organism (final adapters, held-out problems of every "
    "family pooled, 95% intervals), one panel per measure, the default organism first. "
    "Where an organism's bar crosses 0 the effect is gone: compare which link removed takes "
    "the accuracy cost with it.",
}

# variant -> [(what, measure, table, expected)]: "falls" (the interval lies below 0), "holds"
# (it does not: no loss beyond noise), "smaller" (the variant's SDPO - GRPO lies above the
# default's: less of the effect); table "effects" is SDPO - GRPO on the variant, "versus" that
# difference minus the default organism's.
PREDICTIONS = {
    "silent": [
        ("SDPO still shortens responses", "length", "effects", "falls"),
        ("SDPO still loses held-out accuracy", "accuracy", "effects", "falls"),
    ],
    "decorative": [
        ("SDPO still shortens responses", "length", "effects", "falls"),
        ("SDPO loses no held-out accuracy", "accuracy", "effects", "holds"),
        ("the accuracy cost is smaller than the default's", "accuracy", "versus", "smaller"),
    ],
    "checking": [
        (
            "SDPO suppresses epistemic words less than on the default",
            "epistemic",
            "versus",
            "smaller",
        ),
        ("SDPO loses no held-out accuracy", "accuracy", "effects", "holds"),
        ("the accuracy cost is smaller than the default's", "accuracy", "versus", "smaller"),
    ],
}


def behaviour_row(premise: dict) -> dict:
    """An organism in notebook 00's terms, from the figures its premise gate recorded."""
    gate = premise["gate"]
    row = {"gate": {True: "passed", False: "failed", None: "skipped"}[gate.get("passed")]}
    for family, f in gate.get("families", {}).items():
        low, high = f["gain_ci"]
        row |= {f"{family} search - direct": f["gain"], f"{family} search - direct_lo": low,
                f"{family} search - direct_hi": high}  # fmt: skip
        row[f"{family} free replies searching"] = f["free_style"]["search_share"]
        row[f"{family} free epistemic words"] = f["free_style"]["epistemic"]
    trace = gate.get("context", {}).get("trace")
    if trace:
        row["teacher with trace: checks first"] = trace["search_share"]
        row["teacher with trace: epistemic words"] = trace["epistemic"]
        row["teacher with trace: accuracy"] = trace["accuracy"]
    return row


def pooled(samples: pd.DataFrame) -> pd.DataFrame:
    """The samples of every benchmark as one set (problem ids kept apart by benchmark)."""
    ids = samples["benchmark"].astype(str) + "/" + samples["problem_id"].astype(str)
    return samples.assign(problem_id=ids, benchmark=POOLED)


def effects(finals: dict[str, dict[str, pd.DataFrame]]) -> pd.DataFrame:
    """Rows (organism, benchmark): GRPO's and SDPO's measures and SDPO minus GRPO, paired
    over seeds, problems and samples; the benchmarks' pooled row included."""
    values = [f"{m}{end}" for m in MEASURES for end in ("", "_lo", "_hi")]
    parts = {}
    for organism, runs in finals.items():
        both = {k: pd.concat([v, pooled(v)], ignore_index=True) for k, v in runs.items()}
        table = tables.by_benchmark(both, base="GRPO", measures=MEASURES)
        grpo, sdpo = table.loc["GRPO"], table.loc["SDPO"]
        parts[organism] = pd.concat(
            [grpo[values].add_prefix("GRPO "), sdpo[values].add_prefix("SDPO "),
             sdpo.drop(columns=values)], axis=1,
        )  # fmt: skip
    return pd.concat(parts, names=["organism"])


def _difference_cube(runs: dict[str, pd.DataFrame], column: str, problems) -> np.ndarray:
    return stats.cube(runs["SDPO"], column, problems) - stats.cube(runs["GRPO"], column, problems)


def versus_default(finals: dict[str, dict[str, pd.DataFrame]]) -> pd.DataFrame:
    """Rows (variant, measure): (SDPO - GRPO on the variant) - (SDPO - GRPO on the default),
    pooled over the held-out sets, paired over the seeds, problems and sample slots all
    four runs share."""
    every = {o: {k: pooled(v) for k, v in runs.items()} for o, runs in finals.items()}
    problems = sorted(
        set.intersection(*(set(s["problem_id"]) for runs in every.values() for s in runs.values()))
    )
    rows = {}
    for organism, runs in every.items():
        if organism == "default":
            continue
        for name, column in MEASURES.items():
            est = stats.paired_difference(
                _difference_cube(runs, column, problems),
                _difference_cube(every["default"], column, problems),
            )
            rows[(organism, name)] = est.columns("ΔΔ") | {
                "seeds": est.seeds, "problems": est.problems, "samples": est.samples,
            }  # fmt: skip
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(["variant", "measure"])


def _estimate(table: pd.DataFrame, key, prefix: str) -> stats.Estimate:
    row = table.loc[key]
    return stats.Estimate(
        row[prefix], row[f"{prefix}_lo"], row[f"{prefix}_hi"],
        int(row["seeds"]), int(row["problems"]), int(row["samples"]),
    )  # fmt: skip


def judge(expected: str, est: stats.Estimate) -> str:
    """agrees / disagrees / undecided: an interval against a prediction's sign.

    "falls": agrees when the interval lies below 0, disagrees when above, else undecided;
    "holds": disagrees when the interval lies below 0, else agrees (no loss beyond noise);
    "smaller": agrees when the interval lies above 0, disagrees when below, else undecided."""
    below, above = est.high < 0, est.low > 0
    if expected == "falls":
        return "agrees" if below else "disagrees" if above else "undecided (within noise)"
    if expected == "holds":
        return "disagrees" if below else "agrees"
    if expected == "smaller":
        return "agrees" if above else "disagrees" if below else "undecided (within noise)"
    raise ValueError(f"unknown expectation {expected!r}")


def verdicts(effect: pd.DataFrame, versus: pd.DataFrame, variants: list[str]) -> pd.DataFrame:
    """Rows (variant, prediction): the prediction, the measured interval and the verdict."""
    rows = {}
    for variant in variants:
        for what, measure, table, expected in PREDICTIONS[variant]:
            if table == "effects":
                est = _estimate(effect, (variant, POOLED), f"Δ{measure}")
                shown = f"SDPO - GRPO {measure}"
            else:
                est = _estimate(versus, (variant, measure), "ΔΔ")
                shown = f"(SDPO - GRPO {measure}) minus the default's"
            rows[(variant, what)] = {
                "measured": shown, **est.columns("value"), "verdict": judge(expected, est),
                "seeds": est.seeds, "problems": est.problems, "samples": est.samples,
            }  # fmt: skip
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(["variant", "prediction"])


@timed
def run(cfg: MechanismConfig) -> Results:
    res = Results(Path(cfg.out) / NAME)
    organisms = {"default": cfg.model} | {v: variant_spec(cfg.model, v) for v in cfg.variants}
    behaviour = {
        name: behaviour_row(build.read_premise(local_folder(spec)))  # builds on first use
        for name, spec in organisms.items()
    }
    res.table(
        "behaviour", pd.DataFrame.from_dict(behaviour, orient="index").rename_axis("organism")
    )
    benchmarks = load_benchmarks(cfg.eval_data, cfg.eval_limit)
    finals: dict[str, dict[str, pd.DataFrame]] = {name: {} for name in organisms}
    # the variants first: the default organism's runs are notebook 03's, which a notebook
    # running beside this one may be training now
    for name in [*cfg.variants, "default"]:
        ocfg = dataclasses.replace(cfg, model=organisms[name])
        for algo, extra in (("GRPO", cfg.grpo), ("SDPO", cfg.sdpo)):
            runs = training.train_seeds(
                ocfg, training.configs(ocfg, algo.lower(), cfg.data, cfg.train, extra)
            )
            adapters = [run.weights for run in runs]
            finals[name][algo] = evaluate_seeds(ocfg, f"{name}-{algo}", benchmarks, adapters)
    effect = res.table("effects", effects(finals))
    versus = res.table("versus_default", versus_default(finals))
    judged = res.table("verdicts", verdicts(effect, versus, cfg.variants))
    subtitle = f"{cfg.model} and variants · preset {cfg.preset} · seeds {cfg.seeds}"
    figure = plots.effect_panels(effect.xs(POOLED, level="benchmark"), subtitle)
    res.figure("effects", figure, CAPTIONS["effects"])
    lines = ["SDPO minus GRPO on each organism, held-out problems of every family pooled:"]
    for name in organisms:
        for m in MEASURES:
            est = _estimate(effect, (name, POOLED), f"Δ{m}")
            lines.append(f"- {tables.sentence(f'{name}, {m}', est)}")
    lines += ["", "Each prediction of the study's account against what happened:"]
    for (variant, what), row in judged.iterrows():
        lines.append(
            f"- {variant}: {what} — {row['verdict']} ({row['measured']} "
            f"{row['value']:+.3f} [{row['value_lo']:+.3f}, {row['value_hi']:+.3f}])"
        )
    res.notes(lines, findings=findings(res.tables))
    return res


def findings(found: dict) -> list[str]:
    """The headline of notebook 06, from its tables: SDPO minus GRPO in held-out accuracy
    on each organism, and how the account's predictions fared."""
    effect = found["effects"]
    pooled_rows = {
        organism: effect.loc[(organism, POOLED)]
        for organism in effect.index.unique(0)
        if (organism, POOLED) in effect.index
    }
    what = "SDPO minus GRPO by organism, held-out accuracy (families pooled)"
    lines = [tables.finding(what, pooled_rows, "Δaccuracy")]
    judged = found["verdicts"].get("verdict", pd.Series(dtype=str)).astype(str)
    said = judged.str.split(" ").str[0].value_counts()
    if len(said):
        words = {"agrees": "agree", "disagrees": "disagree", "undecided": "undecided"}
        counts = ", ".join(f"{said.get(k, 0)} {w}" for k, w in words.items())
        lines.append(
            f"The account's {int(said.sum())} predictions for the variants, each judged by "
            f"its interval: {counts}."
        )
    return [line for line in lines if line]
