"""The teacher's pressure on a response, token by token: where self-distillation pushes.

For a response y to a problem x and a context c (a correct solution), at each token t

    pressure_t = log pi_T(y_t | teacher prompt(x, c), y_<t) - log pi_S(y_t | prompt(x), y_<t)

in nats, the full softmax at temperature 1. At step 0 the student is the base model and
the teacher the same model with c in its prompt (SDPO's teacher is the initial policy), so
only the prompt differs. pressure_t > 0: the teacher, having seen a correct solution, finds
y_t likelier than the student does, and distilling towards it raises y_t; < 0: lowers it.
Tokens that overlap one of the study's epistemic words are marked (the paper's substring
count, ``display.epistemic_spans``).

Over many responses: per response i the mean pressure over its epistemic tokens, e_i, and
over its other tokens, o_i; across responses the mean of e_i, of o_i, and of e_i - o_i
(paired: the responses with both), each with a 95% bootstrap interval over problems,
responses nested in them (``sdlib.stats``).

    context(cfg)    01: unguided responses, the teacher given each of the three contexts
    sdpo_grpo(cfg)  03: the base model's held-out responses, each with the demonstration
                    SDPO would give it (the first other correct response to its problem)
"""

from __future__ import annotations

import html
import math
import random
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from sdlib import stats
from sdlib.config import ContextConfig, OnPolicyConfig
from sdlib.datasets import load_benchmarks
from sdlib.experiments import context as ctx
from sdlib.experiments import responses, training
from sdlib.experiments.display import (
    Html,
    block,
    coloured_tokens,
    epistemic_spans,
    legend,
)
from sdlib.experiments.evaluation import evaluate_seeds
from sdlib.head import Head
from sdlib.models import load_policy
from sdlib.progress import tqdm
from sdlib.prompts import (
    THINKING,
    chat,
    hint_prompt,
    strip_thinking,
    student_turn,
    system_of,
    teacher_prompt,
)
from sdlib.train import core
from sdlib.train.sdpo import choose_demonstrations

CHUNK = 1024  # tokens per chunk of the output layer: a [CHUNK, V] buffer at most
# the colour scale: the strongest colour at |pressure| >= 2 nats (a factor of e^2 = 7.4 in
# probability), one scale for every view so that colours compare across them
SCALE = 2.0


@dataclass
class TokenPressure:
    """One response scored by the student and the teacher, token by token."""

    problem_id: str
    text: str
    spans: list[tuple[int, int]]  # the characters of each response token
    epistemic: np.ndarray  # [T] bool: the token overlaps an epistemic word
    student: np.ndarray  # [T] log pi_S(y_t | student prompt, y_<t)
    teacher: np.ndarray  # [T] log pi_T(y_t | teacher prompt, y_<t)

    @property
    def value(self) -> np.ndarray:
        """pressure_t = teacher - student: [T]."""
        return self.teacher - self.student

    def means(self) -> tuple[float, float]:
        """(e, o): the mean pressure over the epistemic tokens and over the others (NaN
        when there are none)."""
        v, m = self.value, self.epistemic
        return (
            float(v[m].mean()) if m.any() else math.nan,
            float(v[~m].mean()) if (~m).any() else math.nan,
        )


def response_tokens(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """The response's token ids and each one's character span (a fast tokenizer's
    offsets)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [(int(a), int(b)) for a, b in enc["offset_mapping"]]


def epistemic_tokens(text: str, spans: list[tuple[int, int]]) -> np.ndarray:
    """[T] bool: which tokens overlap an occurrence of an epistemic word."""
    starts = np.array([s for s, _ in spans], dtype=np.int64)
    ends = np.array([e for _, e in spans], dtype=np.int64)
    marked = np.zeros(len(spans), dtype=bool)
    for ws, we in epistemic_spans(text):
        marked |= (starts < we) & (ends > ws)
    return marked


@torch.no_grad()
def log_probs(model, prompts: list[list[int]], response: list[int], pad_id: int) -> np.ndarray:
    """log pi(y_t | prompt_p, y_<t) of the response tokens after each prompt (token ids),
    one batch, through the trainers' packing and chunked output layer: [P, T]."""
    device = next(model.parameters()).device
    batch = core.pack(prompts, [list(response)] * len(prompts), pad_id).to(device)
    hidden, targets = core.selected(model, batch)  # [P*T, H], [P*T], sequence by sequence
    lm = core.unwrap(model).get_output_embeddings()
    head = Head(lm.weight, getattr(lm, "bias", None), 1.0, CHUNK)
    logp = head.student(hidden, targets, k=1).token_logp
    return logp.double().cpu().numpy().reshape(len(prompts), len(response))


def measure(
    model, tokenizer, student: str, teachers: dict[str, str], response: str, problem_id=""
) -> dict[str, TokenPressure]:
    """``response`` scored after the chat-rendered ``student`` prompt and after each of
    ``teachers`` (label -> chat-rendered teacher prompt), the model being both (step 0).
    The response is tokenized again from its text (evaluations keep text, not ids). Empty
    when it has no token, or a prompt followed by it would exceed the model's context."""
    ids, spans = response_tokens(tokenizer, response)
    prompts = [
        tokenizer(p, add_special_tokens=False)["input_ids"] for p in (student, *teachers.values())
    ]
    context = getattr(core.unwrap(model).config, "max_position_embeddings", None) or math.inf
    if not ids or max(map(len, prompts)) + len(ids) > context:
        return {}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    lp = log_probs(model, prompts, ids, pad)
    marked = epistemic_tokens(response, spans)
    return {
        label: TokenPressure(problem_id, response, spans, marked, lp[0], lp[i + 1])
        for i, label in enumerate(teachers)
    }


def summary(by_label: dict[str, list[TokenPressure]], n_boot: int = stats.N_BOOT) -> pd.DataFrame:
    """Rows (label, tokens of): the mean of e_i over the responses with an epistemic token,
    of o_i over those with another token, and of e_i - o_i over those with both (paired),
    each with its 95% interval (``pressure_lo``, ``pressure_hi``) and the responses,
    problems and tokens it rests on."""
    rows = {}
    for label, pressures in by_label.items():
        frame = pd.DataFrame(
            [
                {
                    "problem_id": p.problem_id,
                    "epistemic": p.means()[0],
                    "other": p.means()[1],
                    "epistemic_n": int(p.epistemic.sum()),
                    "other_n": int((~p.epistemic).sum()),
                }
                for p in pressures
            ],
            columns=["problem_id", "epistemic", "other", "epistemic_n", "other_n"],
        )
        rows[(label, "epistemic tokens")] = _row(frame, ["epistemic"], n_boot)
        rows[(label, "other tokens")] = _row(frame, ["other"], n_boot)
        rows[(label, "epistemic - other")] = _row(frame, ["epistemic", "other"], n_boot)
    index = pd.MultiIndex.from_tuples(list(rows), names=["context", "tokens of"])
    return pd.DataFrame(list(rows.values()), index=index)


def _row(frame: pd.DataFrame, columns: list[str], n_boot: int) -> dict:
    """The mean of ``columns[0]`` (or of ``columns[0] - columns[1]``, paired) with its
    interval, over the responses where it is defined; NaN with n = 0 when none is."""
    kept = frame.dropna(subset=columns)
    tokens = int(sum(kept[f"{c}_n"].sum() for c in columns))
    if kept.empty:
        nan = {"pressure": math.nan, "pressure_lo": math.nan, "pressure_hi": math.nan}
        return nan | {"responses": 0, "problems": 0, "tokens": 0}
    kept = kept.assign(sample=kept.groupby("problem_id").cumcount())
    cubes = [stats.cube(kept, c) for c in columns]
    with warnings.catch_warnings():
        # a replicate may draw only the empty slots of problems with fewer responses
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
        est = (
            stats.estimate(*cubes, n_boot)
            if len(cubes) == 1
            else stats.paired_difference(*cubes, n_boot)
        )
    return est.columns("pressure") | {
        "responses": len(kept),
        "problems": kept["problem_id"].nunique(),
        "tokens": tokens,
    }


def draw(samples: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """``n`` rows of ``samples`` (all when fewer), drawn with ``seed`` from the rows in
    their sorted key order, so the draw depends on nothing but the rows and the seed."""
    ordered = samples.sort_values([c for c in responses.KEY if c in samples]).reset_index(drop=True)
    picked = random.Random(seed).sample(range(len(ordered)), min(n, len(ordered)))
    return ordered.iloc[picked].reset_index(drop=True)


@dataclass(repr=False)
class PressureView:
    """What a notebook shows: one response coloured per context, the summary table (its
    numbers, ``table``) and every measured response (``pressures``)."""

    table: pd.DataFrame
    pressures: dict[str, list[TokenPressure]]
    html: Html

    def _repr_html_(self) -> str:
        return str(self.html)

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}: {len(v)} responses" for k, v in self.pressures.items())
        return f"<PressureView ({counts}); .table holds the means>"


def per_label(measured: list[dict[str, TokenPressure]]) -> dict[str, list[TokenPressure]]:
    """The measured responses' pressures, label by label."""
    out: dict[str, list[TokenPressure]] = {}
    for one in measured:
        for label, pressure in one.items():
            out.setdefault(label, []).append(pressure)
    return out


def view(
    measured: list[dict[str, TokenPressure]], heading: str, note: str, scale: float = SCALE
) -> PressureView:
    """The first measured response with an epistemic token and every label (else the
    first), coloured under each label (strongest at |pressure| >= ``scale`` nats); the
    legend; the summary table."""
    if not measured:
        raise ValueError(f"{heading}: no response could be measured ({note})")
    labels = per_label(measured)
    table = summary(labels)
    whole = [m for m in measured if len(m) == len(labels)] or measured
    shown = next((m for m in whole if next(iter(m.values())).epistemic.any()), whole[0])
    note_html = f'<div style="font-size:11px;color:#57606a">{html.escape(note)}</div>'
    parts = [block(heading, note_html), legend(scale, "the teacher lowers the token", "raises it")]
    for label, p in shown.items():
        title = f"{label}, problem {p.problem_id}. Mean pressure: {_means_text(p)}"
        body = coloured_tokens(p.text, p.spans, p.value, p.epistemic, scale, _describe(p))
        parts.append(block(title, body))
    caption = (
        f"Mean pressure (nats) over {len(measured)} responses, each response's mean over its "
        f"tokens of that kind; 95% intervals over problems, responses nested:"
    )
    parts.append(block(caption, stats.pretty(table).to_html()))
    return PressureView(table, labels, Html("".join(parts)))


def _means_text(p: TokenPressure) -> str:
    said = []
    for (kind, n), mean in zip(
        (("epistemic", int(p.epistemic.sum())), ("other", int((~p.epistemic).sum()))),
        p.means(),
        strict=True,
    ):
        said.append(f"{mean:+.3f} nats on its {n} {kind} tokens" if n else f"no {kind} token")
    return "; ".join(said)


def _describe(p: TokenPressure):
    return lambda i: (
        f"{p.value[i]:+.3f} nats: teacher {p.teacher[i]:.3f}, student {p.student[i]:.3f}"
    )


def load_model(cfg):
    """The base model (step 0's student and teacher), in evaluation mode."""
    policy = load_policy(cfg.model, dtype=cfg.dtype, device=cfg.device)
    policy.model.eval()
    return policy.model, policy.tokenizer


def prompt(cfg, tokenizer, user: str, problem) -> str:
    """A user turn rendered as the experiment renders it for the model (``prompts.chat``)."""
    return chat(tokenizer, user, THINKING[cfg.thinking], cfg.few_shot, system_of(problem))


def measure_all(cfg, rows: pd.DataFrame, by_id: dict, teachers) -> tuple[list[dict], int]:
    """``measure`` of each row's response after its problem's student prompt and the
    teacher user turns ``teachers(row, problem)`` (label -> text): one dict per measured
    response, and how many were skipped."""
    model, tok = load_model(cfg)
    measured, skipped = [], 0
    for row in tqdm(rows.to_dict("records"), desc="teacher pressure"):
        p = by_id[row["problem_id"]]
        turns = {k: prompt(cfg, tok, v, p) for k, v in teachers(row, p).items()}
        student = prompt(cfg, tok, student_turn(p), p)
        one = measure(model, tok, student, turns, row["text"], p.id)
        if one:
            measured.append(one)
        skipped += not one
    return measured, skipped


def context(cfg: ContextConfig, n: int = 100, seed: int = 0) -> PressureView:
    """Notebook 01: ``n`` unguided responses (drawn with ``seed``), each scored by the
    teacher given the full solution, the solution without thinking and the regeneration,
    inside notebook 01's hint prompt (``prompts.hint_prompt``)."""
    problems, solution, per_seed = responses.context_samples(cfg)
    contexts = responses.condition_contexts(solution, per_seed)
    unguided = pd.concat([runs["unguided"] for runs in per_seed.values()], ignore_index=True)

    def teachers(row, p):
        return {
            c: hint_prompt(ctx.ask(p), text)
            for c in ctx.CONDITIONS[1:]
            if (text := contexts(c, row)) is not None
        }

    rows = draw(unguided, n, seed)
    measured, skipped = measure_all(cfg, rows, {p.id: p for p in problems}, teachers)
    note = (
        f"{len(rows)} unguided responses drawn with seed {seed} ({skipped} skipped: empty, "
        f"or too long for the model's context); the student sees the problem, the teacher "
        f"the problem and the context; both are the base model"
    )
    heading = "Teacher pressure under each context of notebook 01 (one response, three teachers)"
    return view(measured, heading, note)


def with_demonstrations(samples: pd.DataFrame, tcfg) -> pd.DataFrame:
    """``samples`` (one policy's responses, in seed and sample order per problem) with a
    ``demonstration`` column: SDPO's choice (``train.sdpo.choose_demonstrations``), the
    first correct response to the same problem, other than itself when the run says so,
    thinking stripped when the run strips it; None where there is none. The run's own cut
    of a long demonstration (``max_teacher_prompt_tokens``) is not applied."""
    ordered = samples.sort_values(list(responses.KEY)).reset_index(drop=True)
    group = ordered.groupby(["benchmark", "problem_id"], sort=False).ngroup().to_numpy()
    picks = choose_demonstrations(
        torch.tensor(ordered["correct"].astype(float).to_numpy()),
        torch.tensor(group),
        tcfg.success_threshold,
        tcfg.dont_reprompt_on_self_success,
    )
    texts = ordered["text"].tolist()
    demos = [None if j is None else texts[j] for j in picks]
    if tcfg.strip_demo_thinking:
        demos = [None if d is None else strip_thinking(d) for d in demos]
    return ordered.assign(demonstration=demos)


def sdpo_grpo(cfg: OnPolicyConfig, n: int = 100, seed: int = 0) -> PressureView:
    """Notebook 03: ``n`` of the base model's held-out responses that have a demonstration
    (drawn with ``seed``), each scored by SDPO's teacher prompt (``prompts.teacher_prompt``)
    with its demonstration (``with_demonstrations``, the SDPO run's knobs)."""
    benchmarks = load_benchmarks(cfg.eval_data, cfg.eval_limit)
    by_id = responses.by_id(benchmarks)
    tcfg = training.config(cfg, "sdpo", cfg.data, cfg.train, cfg.sdpo)
    base = with_demonstrations(evaluate_seeds(cfg, "base", benchmarks), tcfg)
    source = "the first other correct response to its problem, as SDPO picks it"
    if base["demonstration"].isna().all():  # a model never right (the smoke preset)
        base["demonstration"] = base["problem_id"].map(lambda i: by_id[i].solution)
        source = "its problem's reference solution (no response had a correct sibling)"
    usable = base.dropna(subset=["demonstration"])
    if usable.empty:
        raise ValueError(
            f"no base-model response to {cfg.eval_data} has a demonstration: none has a "
            f"correct sibling and the problems carry no reference solution"
        )
    rows = draw(usable, n, seed)

    def teachers(row, p):
        return {"demonstration": teacher_prompt(student_turn(p), row["demonstration"])}

    measured, skipped = measure_all(cfg, rows, by_id, teachers)
    note = (
        f"{len(rows)} of the base model's {len(usable)} held-out responses with a "
        f"demonstration, drawn with seed {seed} ({skipped} skipped: empty, or too long for "
        f"the model's context); demonstration: {source}; both models are the base model"
    )
    heading = (
        "Teacher pressure at SDPO's first step (the base model, with and without a demonstration)"
    )
    return view(measured, heading, note)
