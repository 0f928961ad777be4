"""Every metric sdlib writes, documented once: training rows and evaluation tables.

Training runs append one row per step to ``metrics.jsonl``; ``sdlib.evaluate`` writes one
row per benchmark. Each key is namespaced (``rollout/``, ``train/``, ``time/``, ``eval/``)
and documented here with the runs that write it and, where it depends on the config, when.
Writers call ``check_row``: a row with a missing or an undocumented key is an error, so the
table below is the contract, not a description. A metric that a step could not compute
(no sample entered the loss) is ``None`` (JSON null); a metric that a config never computes
(the KL term of a run without one) is absent, not zero.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sdlib.behavior import EPISTEMIC_WORDS

GRPO, SDPO, SFT, EVAL = "grpo", "sdpo", "sft", "eval"
ON_POLICY = (GRPO, SDPO)
TRAINING = (GRPO, SDPO, SFT)


def _always(cfg: Any) -> bool:
    return True


def _policy_loss(cfg: Any) -> bool:
    """GRPO's surrogate is in the loss: GRPO, or SDPO mixed or routed with it."""
    return cfg.policy_loss


@dataclass(frozen=True)
class Metric:
    doc: str
    kinds: tuple[str, ...]  # the runs that write it: grpo, sdpo, sft, eval
    when: Callable[[Any], bool] = _always  # ... and only when this holds of their config
    tokens: bool = False  # a mean over the step's forwarded tokens (see token_metrics)


METRICS: dict[str, Metric] = {
    "step": Metric("0-based step index", TRAINING),
    # phases 1-3: sampling and grading
    "rollout/reward_mean": Metric("mean reward r over the samples (1 right, else 0)", ON_POLICY),
    "rollout/reward_std": Metric("std of r over the step's samples", ON_POLICY),
    "rollout/success_group_frac": Metric("problems with at least one right sample", ON_POLICY),
    "rollout/len_tokens": Metric("mean response length in tokens", ON_POLICY),
    "rollout/epi_total": Metric("mean epistemic words per response, paper (substring)", ON_POLICY),
    "rollout/epi_total_word": Metric("mean epistemic words per response, whole words", ON_POLICY),
    "rollout/truncated_frac": Metric("responses cut at max_new_tokens", ON_POLICY),
    "rollout/is_weight_mean": Metric(
        "mean min(pi_old / pi_sampler, rollout_is_clip) over response tokens",
        ON_POLICY,
        lambda c: c.rollout_is == "token",
    ),
    # phases 4-5: the loss and the updates
    "train/active_frac": Metric("samples forwarded in the loss", ON_POLICY),
    "train/tokens": Metric("response tokens forwarded in the loss this step", TRAINING),
    "train/loss": Metric(
        "each update's aggregated loss (its micro-batch shares summed, so independent of "
        "micro_batch), mean over the step's updates",
        TRAINING,
    ),
    "train/entropy": Metric(
        "student token entropy -sum_v p_v log p_v, mean over forwarded tokens",
        ON_POLICY,
        tokens=True,
    ),
    "train/grad_norm": Metric("gradient L2 norm before clipping, mean over updates", TRAINING),
    "train/lr": Metric("learning rate, mean over the step's updates", TRAINING),
    "train/clip_frac": Metric(
        "GRPO: tokens where the clipped branch is taken", ON_POLICY, _policy_loss, tokens=True
    ),
    "train/clip_frac_low": Metric(
        "GRPO: tokens with ratio < 1 - eps_low and A < 0", ON_POLICY, _policy_loss, tokens=True
    ),
    "train/clip_frac_high": Metric(
        "GRPO: tokens with ratio > 1 + eps_high and A > 0", ON_POLICY, _policy_loss, tokens=True
    ),
    "train/dual_clip_frac": Metric(
        "GRPO: tokens where the dual clip bound -A c is taken",
        ON_POLICY,
        lambda c: c.policy_loss and c.dual_clip > 0,
        tokens=True,
    ),
    "train/ratio_mean": Metric(
        "GRPO: mean ratio pi / pi_old over forwarded tokens", ON_POLICY, _policy_loss, tokens=True
    ),
    "train/kl_initial": Metric(
        "how far the policy moved: mean k3 estimate of KL(pi || pi_initial) per token",
        ON_POLICY,
        lambda c: c.track_kl or c.kl_coef > 0,
        tokens=True,
    ),
    "train/zero_adv_frac": Metric(
        "GRPO: samples whose group advantage is 0", ON_POLICY, _policy_loss
    ),
    "train/divergence": Metric(
        "SDPO: mean per-token D_alpha(student || teacher)", (SDPO,), tokens=True
    ),
    "train/is_weight_mean": Metric(
        "SDPO: mean detached weight min(pi / pi_old, is_clip)",
        (SDPO,),
        lambda c: c.is_clip > 0,
        tokens=True,
    ),
    "train/is_clipped_frac": Metric(
        "SDPO: tokens whose weight hit is_clip", (SDPO,), lambda c: c.is_clip > 0, tokens=True
    ),
    "train/masked_frac": Metric("SDPO: samples without a demonstration (no loss)", (SDPO,)),
    "train/routed_frac": Metric(
        "SDPO with route: samples routed to the distillation", (SDPO,), lambda c: c.route != "none"
    ),
    "train/teacher_entropy": Metric(
        "SDPO with teacher_entropy_weight: mean teacher entropy over distilled tokens, at "
        "the step's start",
        (SDPO,),
        lambda c: c.teacher_entropy_weight > 0,
    ),
    "time/rollout": Metric("seconds of phases 1-3 (sampling and grading)", ON_POLICY),
    "time/teacher": Metric("SDPO: seconds of teacher forwards within the update", (SDPO,)),
    "time/update": Metric("seconds of phase 5 (forwards, backwards, optimizer)", TRAINING),
    "time/step": Metric("seconds of the whole step", TRAINING),
    # evaluation, one row per benchmark (sdlib.evaluate.summarize)
    "eval/problems": Metric("problems evaluated", (EVAL,)),
    "eval/k": Metric("samples per problem", (EVAL,)),
    "eval/accuracy": Metric("avg@k: mean correctness over all samples (paper: avg@16)", (EVAL,)),
    "eval/pass@1": Metric("unbiased pass@1, mean over problems", (EVAL,)),
    "eval/pass@k": Metric("unbiased pass@k = 1 - C(n-c, k) / C(n, k), mean over problems", (EVAL,)),
    "eval/maj@k": Metric("the most frequent answer is right (ties: first given)", (EVAL,)),
    "eval/len_tokens": Metric("mean response length in tokens", (EVAL,)),
    "eval/think_tokens": Metric("mean tokens before the last </think>", (EVAL,)),
    "eval/epi_total": Metric("mean epistemic words per response, paper (substring)", (EVAL,)),
    "eval/epi_total_word": Metric("mean epistemic words per response, whole words", (EVAL,)),
    "eval/boxed_frac": Metric("responses with an extractable final answer", (EVAL,)),
    "eval/truncated_frac": Metric("responses cut at max_new_tokens", (EVAL,)),
    **{
        f"eval/epi/{w}": Metric(f"mean count of {w!r} per response, substring mode", (EVAL,))
        for w in EPISTEMIC_WORDS
    },
}


class MetricsContractError(RuntimeError):
    """A writer emitted a key the table does not document for it, or left one out."""


def expected_keys(kind: str, cfg: Any = None) -> list[str]:
    """The keys a ``kind`` run (grpo, sdpo, sft, eval) writes under ``cfg``, in table order."""
    return [k for k, m in METRICS.items() if kind in m.kinds and (cfg is None or m.when(cfg))]


def token_metrics(kind: str, cfg: Any = None) -> list[str]:
    """The per-token metrics of ``expected_keys``: each loss computes them per forwarded
    token and the update averages them once over the step, so the figure does not depend
    on how the step is cut into micro-batches."""
    return [k for k in expected_keys(kind, cfg) if METRICS[k].tokens]


def check_row(row: dict, kind: str, cfg: Any = None) -> dict:
    """``row`` with its keys in table order; raises if they are not exactly the documented."""
    expected = expected_keys(kind, cfg)
    missing, extra = sorted(set(expected) - set(row)), sorted(set(row) - set(expected))
    if missing or extra:
        raise MetricsContractError(
            f"{kind} metrics row: missing {missing}, undocumented {extra}; the keys are "
            f"documented in sdlib.metrics.METRICS"
        )
    return {k: row[k] for k in expected}
