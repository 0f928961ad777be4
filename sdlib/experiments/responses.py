"""The real responses behind a notebook's tables, side by side.

Every method's response to the same problem, at the same seed and sample index, so what
differs between the cards is the method alone (evaluations draw sample j of a problem with
the same seed for every model: ``evaluate.problem_key``). Which one is shown is drawn, never
picked by hand: ``choose`` takes the (benchmark, problem, seed, sample) keys every method
answered, sorts them and draws one with ``random.Random(seed)``.

The samples are found where the notebook's run left them, by the experiment's own functions
(content-addressed folders: a finished training or evaluation loads nothing and samples
nothing), so these functions belong after ``run(cfg)``:

    context(cfg)    01: the four conditions of a problem
    sft(cfg)        02: a D_ug and a D_sg pair of one problem, then base and both SFT models
    sdpo_grpo(cfg)  03: base, GRPO, SDPO (and SDPO w/o thinking), final checkpoints
    teacher(cfg)    04: base, SDPO with the fixed teacher, SDPO with each EMA teacher
    coverage(cfg)   05: base, then each algorithm at each |D|
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd

from sdlib.behavior import behavior_row
from sdlib.config import (
    ContextConfig,
    CoverageConfig,
    OnPolicyConfig,
    RemediesConfig,
    SFTExperimentConfig,
    TeacherConfig,
)
from sdlib.datasets import load_benchmarks, pooled
from sdlib.experiments import context as ctx
from sdlib.experiments import coverage as cov
from sdlib.experiments import remedies as remedies_experiment
from sdlib.experiments import sdpo_grpo as sdpo_grpo_experiment
from sdlib.experiments import sft as sft_experiment
from sdlib.experiments import teacher as teacher_experiment
from sdlib.experiments import training
from sdlib.experiments.display import Html, Response, block, cards
from sdlib.experiments.evaluation import checkpoint_evals, evaluate_policy, evaluate_seeds
from sdlib.models import load_tokenizer
from sdlib.prompts import strip_thinking
from sdlib.rollout import Sampling

KEY = ("benchmark", "problem_id", "seed", "sample")


def common_keys(frames: dict[str, pd.DataFrame], key=KEY) -> list[tuple]:
    """The ``key`` values (by default benchmark, problem id, seed, sample) every frame
    holds, sorted."""
    common = None
    for label, frame in frames.items():
        missing = [c for c in key if c not in frame]
        if missing:
            raise ValueError(f"the samples of {label!r} have no column {missing}")
        keys = set(frame[list(key)].itertuples(index=False, name=None))
        common = keys if common is None else common & keys
    if not common:
        raise ValueError(f"no {key} is answered by every one of {list(frames)}")
    return sorted(common, key=str)


def choose(frames: dict[str, pd.DataFrame], seed: int = 0, key=KEY) -> tuple:
    """One of ``common_keys(frames, key)``, drawn uniformly with ``random.Random(seed)``."""
    return random.Random(seed).choice(common_keys(frames, key))


def rows_at(frames: dict[str, pd.DataFrame], at: tuple, key=KEY) -> dict[str, dict]:
    """Each frame's row at key ``at``."""
    out = {}
    for label, frame in frames.items():
        hit = frame
        for column, value in zip(key, at, strict=True):
            hit = hit[hit[column] == value]
        out[label] = hit.iloc[0].to_dict()
    return out


def as_response(label: str, row: dict, context: str | None = None) -> Response:
    """An evaluation sample (``evaluate.sample_records``' row) as a card."""
    tokens = row.get("len_tokens")
    return Response(
        label,
        row["text"],
        bool(row["correct"]),
        None if pd.isna(tokens) else int(tokens),
        row.get("pred") if isinstance(row.get("pred"), str) else "",
        context,
    )


def side_by_side(
    frames: dict[str, pd.DataFrame], problems: dict, seed: int = 0, contexts=None
) -> Html:
    """Cards of every frame's response at ``choose(frames, seed)``, under the problem's
    question (``problems``: id -> Problem). ``contexts(label, row)``, when given, says what
    the prompt carried besides the problem."""
    at = choose(frames, seed)
    rows = rows_at(frames, at)
    benchmark, problem_id, run_seed, sample = at
    problem = problems.get(problem_id)
    question = problem.question if problem else ""
    gold = next(iter(rows.values())).get("gold", problem.answer if problem else "")
    note = (
        f"problem {problem_id} of {benchmark}, seed {run_seed}, sample {sample}: drawn with "
        f"random.Random({seed}) from the {len(common_keys(frames))} (problem, seed, sample) "
        f"every column answered"
    )
    return cards(
        [as_response(k, r, contexts(k, r) if contexts else None) for k, r in rows.items()],
        heading=f"{question}   (gold answer: {gold})",
        note=note,
    )


def final_samples(cfg, runs: dict[str, list], benchmarks) -> dict[str, pd.DataFrame]:
    """The base model's evaluation samples, then each run's final checkpoint's, found as
    ``sdpo_grpo.compare`` made them (``checkpoint_evals``: its last step)."""
    base = evaluate_seeds(cfg, "base", benchmarks)
    out = {"base": base}
    for label, tcfgs in runs.items():
        points = checkpoint_evals(cfg, label, training.train_seeds(cfg, tcfgs), benchmarks, base)
        out[label] = points[max(points)]
    return out


def by_id(benchmarks: dict) -> dict:
    return {p.id: p for ps in benchmarks.values() for p in ps}


def sdpo_grpo(cfg: OnPolicyConfig, seed: int = 0) -> Html:
    """Notebook 03: base, GRPO, SDPO (and SDPO w/o thinking) on one held-out problem."""
    benchmarks = load_benchmarks(cfg.eval_data, cfg.eval_limit)
    runs = sdpo_grpo_experiment.runs_of(cfg)
    return side_by_side(final_samples(cfg, runs, benchmarks), by_id(benchmarks), seed)


def teacher(cfg: TeacherConfig, seed: int = 0) -> Html:
    """Notebook 04: base, SDPO with the fixed teacher and with each EMA teacher."""
    benchmarks = load_benchmarks(cfg.eval_data, cfg.eval_limit)
    runs = teacher_experiment.runs_of(cfg)
    return side_by_side(final_samples(cfg, runs, benchmarks), by_id(benchmarks), seed)


def remedies(cfg: RemediesConfig, seed: int = 0) -> Html:
    """Notebook 07: base, GRPO, SDPO and each remedy on one held-out problem."""
    benchmarks = load_benchmarks(cfg.eval_data, cfg.eval_limit)
    runs = remedies_experiment.runs_of(cfg)
    return side_by_side(final_samples(cfg, runs, benchmarks), by_id(benchmarks), seed)


def coverage(cfg: CoverageConfig, seed: int = 0) -> Html:
    """Notebook 05: base, then each algorithm trained on each |D| (sizes in order)."""
    sets = cov.training_sets(cfg, Path(cfg.out) / cov.NAME)
    runs = {}
    for size, data in sets.items():
        for algo in cfg.algos:
            extra = cfg.sdpo if algo == "sdpo" else cfg.grpo
            runs[f"{algo.upper()} |D|={size}"] = training.configs(
                cfg, algo, [data], cfg.train, extra
            )
    benchmarks = load_benchmarks(cfg.eval_data, cfg.eval_limit)
    return side_by_side(final_samples(cfg, runs, benchmarks), by_id(benchmarks), seed)


def sft(cfg: SFTExperimentConfig, seed: int = 0) -> Html:
    """Notebook 02: a D_ug and a D_sg training pair of the same problem, then base and the
    two SFT models on one held-out problem."""
    paths = sft_experiment.sft_sets(cfg)
    pairs = {
        name: pd.DataFrame([json.loads(line) for line in path.read_text().splitlines()])
        for name, path in paths.items()
    }
    runs = {
        f"SFT on {n}": training.configs(cfg, "sft", [str(p)], cfg.train) for n, p in paths.items()
    }
    benchmarks = load_benchmarks(cfg.eval_data, cfg.eval_limit)
    frames = {"base": evaluate_seeds(cfg, "base", benchmarks)}
    for label, tcfgs in runs.items():
        weights = [t.weights for t in training.train_seeds(cfg, tcfgs)]
        frames[label] = evaluate_seeds(cfg, label.replace(" ", "_"), benchmarks, weights)
    return Html(
        block(
            "Training pairs: D_ug (sampled without context) vs D_sg (with the solution)",
            training_pairs(pairs, load_tokenizer(cfg.model), seed),
        )
        + block("After SFT, on a held-out problem", side_by_side(frames, by_id(benchmarks), seed))
    )


def training_pairs(pairs: dict[str, pd.DataFrame], tokenizer, seed: int = 0) -> Html:
    """The pair of each set (``{"prompt", "response", "problem_id"}`` rows) for one problem
    they share, drawn with ``choose``."""
    (problem_id,) = choose(pairs, seed, key=("problem_id",))
    shown = []
    for name, frame in pairs.items():
        row = frame[frame["problem_id"] == problem_id].iloc[0]
        length = behavior_row(row["response"], tokenizer)["len_tokens"]
        shown.append(Response(name, row["response"], None, length))
    shared = common_keys(pairs, key=("problem_id",))
    note = (
        f"problem {problem_id}: drawn with random.Random({seed}) from the {len(shared)} "
        f"problems every set holds; pairs as notebook 01 wrote them (not graded here)"
    )
    return cards(shown, heading=row["prompt"], note=note)


def context_samples(cfg: ContextConfig):
    """Notebook 01's selected problems, each one's correct solution s, and per seed the
    samples of its four conditions, found as ``context.run`` made them."""
    pool = pooled(cfg.data, cfg.pool_limit)
    screening = Sampling(cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.top_k, cfg.seeds[0])
    screen = evaluate_policy(
        cfg, "screen", {"pool": pool}, k=cfg.select_k, sampling=screening, prompt_fn=ctx.ask
    ).samples
    solution = {p.id: p.solution for p in pool if p.solution} | ctx.first_correct(screen)
    problems = ctx.select(cfg, pool, screen, solution)
    per_seed = {s: ctx.sample_conditions(cfg, problems, solution, s) for s in cfg.seeds}
    return problems, solution, per_seed


def regenerations(per_seed: dict) -> dict[int, dict[str, str]]:
    """Per seed, each problem's regeneration context: its first correct response under the
    full solution, else its first response (``context.sample_conditions``' rule)."""
    out = {}
    for s, runs in per_seed.items():
        guided = runs["full solution"]
        out[s] = ctx.first_correct(guided, correct_only=False) | ctx.first_correct(guided)
    return out


def condition_contexts(solution: dict, per_seed: dict):
    """``contexts(condition, row)``: the text each condition's prompt carried for a sample
    (None for unguided)."""
    regen = regenerations(per_seed)

    def contexts(condition: str, row: dict) -> str | None:
        pid = row["problem_id"]
        return {
            "unguided": None,
            "full solution": solution[pid],
            "solution w/o thinking": strip_thinking(solution[pid]),
            "regeneration": regen[row["seed"]].get(pid),
        }[condition]

    return contexts


def context(cfg: ContextConfig, seed: int = 0) -> Html:
    """Notebook 01: one selected problem's responses under the four contexts, each card
    with the context its prompt carried (folded)."""
    problems, solution, per_seed = context_samples(cfg)
    frames = {
        c: pd.concat([runs[c] for runs in per_seed.values()], ignore_index=True)
        for c in ctx.CONDITIONS
    }
    return side_by_side(
        frames, {p.id: p for p in problems}, seed, condition_contexts(solution, per_seed)
    )
