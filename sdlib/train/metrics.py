"""The metrics a training step writes to metrics.jsonl: each name documented once, here.

A test checks that the emitted keys are exactly these (per algorithm).
"""

from __future__ import annotations

import torch

from sdlib.behavior import behavior_row

METRICS = {
    "step": "0-based on-policy step index",
    "rollout/reward_mean": "mean reward r over the step's N samples (r = 1 correct, else 0)",
    "rollout/reward_std": "std of r over the step's samples",
    "rollout/success_group_frac": "fraction of problems with at least one correct sample",
    "rollout/len_tokens": "mean response length in tokens",
    "rollout/epi_total": "mean epistemic count per response, paper (substring) mode",
    "rollout/epi_total_word": "mean epistemic count per response, word-boundary mode",
    "rollout/truncated_frac": "fraction of responses cut at max_new_tokens",
    "train/active_frac": "fraction of samples whose forward enters the loss",
    "train/loss": "aggregated loss of a micro-batch (sums to the update's loss), mean",
    "train/entropy": "mean student token entropy -sum_v p_v log p_v at response positions",
    "train/grad_norm": "global L2 norm of the LoRA gradient before clipping, mean over updates",
    "train/lr": "learning rate of the update, mean over updates",
    "train/clip_frac": "GRPO: fraction of tokens where the ratio clip is active",
    "train/ratio_mean": "GRPO: mean ratio pi / pi_old over response tokens",
    "train/kl_initial": "GRPO: mean k3 estimate of KL(pi || pi_initial) per token",
    "train/zero_adv_frac": "GRPO: fraction of samples whose group advantage is 0",
    "train/divergence": "SDPO: mean per-token divergence D_alpha(student || teacher)",
    "train/is_weight_mean": "SDPO: mean detached importance weight min(pi / pi_old, is_clip)",
    "train/is_clipped_frac": "SDPO: fraction of tokens whose weight hit is_clip",
    "train/masked_frac": "SDPO: fraction of samples without a demonstration (no loss)",
    "time/rollout": "seconds of phases 1-3 (sampling and grading)",
    "time/teacher": "SDPO: seconds of teacher forwards within the update",
    "time/update": "seconds of phases 4-5",
    "time/step": "seconds of the whole step",
}
GRPO_ONLY = {"train/clip_frac", "train/ratio_mean", "train/kl_initial", "train/zero_adv_frac"}
SDPO_ONLY = {
    "train/divergence",
    "train/is_weight_mean",
    "train/is_clipped_frac",
    "train/masked_frac",
    "time/teacher",
}


def expected_keys(algo: str) -> set[str]:
    other = SDPO_ONLY if algo == "grpo" else GRPO_ONLY
    return set(METRICS) - other


def rollout_metrics(sb) -> dict:
    rows = [
        behavior_row(t, token_ids=ids)
        for t, ids in zip(sb.rollouts.text, sb.rollouts.token_ids, strict=True)
    ]
    solved = torch.zeros(len(sb.problems)).index_add_(0, sb.group, sb.rewards)
    mean = lambda key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    return {
        "rollout/reward_mean": float(sb.rewards.mean()),
        "rollout/reward_std": float(sb.rewards.std()) if len(sb.rewards) > 1 else 0.0,
        "rollout/success_group_frac": float((solved > 0).float().mean()),
        "rollout/len_tokens": mean("len_tokens"),
        "rollout/epi_total": mean("epi_total"),
        "rollout/epi_total_word": mean("epi_total_word"),
        "rollout/truncated_frac": sum(f == "length" for f in sb.rollouts.finish_reason) / len(rows),
        "train/active_frac": float(sb.active.float().mean()),
    }
