"""GRPO: reinforce correct answers relative to their group (PAPER.md's reference knobs).

    A_i   = r_i - mean_{j in group(i)} r_j              (no std division by default)
    rho_t = pi(y_t) / pi_old(y_t)                        (pi_old: the rollout log-probs)
    L     = agg_t max(-A rho_t, -A clip(rho_t, 1 - eps_low, 1 + eps_high))
            [+ kl_coef * k3(pi || pi_initial)_t]         (off in the reference runs)

A sample whose advantage is 0 (its whole group right or wrong) has zero loss: it is not
forwarded, but its tokens still count in the token-mean normaliser, as in the reference.
"""

from __future__ import annotations

import torch

from sdlib.losses import (
    aggregate,
    clipped_surrogate,
    group_advantages,
    scatter_tokens,
    student_head_stats,
    teacher_head_stats,
)
from sdlib.models import initial_policy
from sdlib.train import core


class GRPO:
    def __init__(self, cfg, policy):
        self.cfg = cfg

    def prepare(self, sb) -> None:
        adv = group_advantages(sb.rewards, sb.group, std_normalize=self.cfg.std_normalize)
        sb.extra["adv"] = adv
        needs_all = self.cfg.entropy_coef > 0 or self.cfg.kl_coef > 0
        sb.active = torch.ones_like(adv, dtype=torch.bool) if needs_all else adv != 0

    def counted(self, sb) -> torch.Tensor:
        return torch.ones_like(sb.active)

    def micro_loss(self, model, sb, rows, norm):
        cfg, device = self.cfg, norm.device
        batch = sb.student.rows(rows).to(device)
        mask = batch.loss_mask
        old = sb.logp_old[rows, : mask.shape[1]].to(device)
        h, tokens = core.selected(model, batch)
        weight, bias = core.head(model)
        st = student_head_stats(
            h, weight, tokens, k=1, bias=bias, with_entropy=True, **core.head_options(cfg)
        )
        logp = scatter_tokens(st.token_logp, mask)
        entropy = scatter_tokens(st.entropy, mask)
        per_token, clip = clipped_surrogate(
            logp,
            old,
            sb.extra["adv"][rows].to(device),
            mask,
            cfg.eps_low,
            cfg.eps_high,
            cfg.dual_clip or None,
            entropy,
            cfg.entropy_coef,
        )
        stats = {
            "train/clip_frac": clip["clip_frac"],
            "train/ratio_mean": clip["ratio_mean"],
            "train/entropy": st.entropy.mean().detach(),
        }
        if cfg.kl_coef > 0:
            k3 = self._kl_initial(model, batch, st, weight, bias, tokens)
            per_token = per_token + cfg.kl_coef * scatter_tokens(k3, mask)
            stats["train/kl_initial"] = k3.mean().detach()
        loss = aggregate(per_token, mask, cfg.loss_agg, norm)
        return loss, {"train/loss": loss.detach(), **stats}

    def _kl_initial(self, model, batch, st, weight, bias, tokens):
        """k3 = exp(q - p) - (q - p) - 1, unbiased for KL(pi || pi_initial), always >= 0."""
        with torch.no_grad(), initial_policy(model):
            h_ref, _ = core.selected(model, batch)
            ref = teacher_head_stats(
                h_ref, weight, tokens, st.topk_index, bias=bias, **core.head_options(self.cfg)
            ).token_logp
        d = ref - st.token_logp
        return d.exp() - d - 1

    def after_update(self, model) -> None:
        pass

    def step_stats(self, sb) -> dict:
        row = {"train/zero_adv_frac": float((sb.extra["adv"] == 0).float().mean())}
        if self.cfg.kl_coef == 0:
            row["train/kl_initial"] = 0.0
        return row

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass
