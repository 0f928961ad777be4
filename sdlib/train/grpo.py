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

from sdlib.losses import aggregate_tokens, clipped_surrogate, group_advantages
from sdlib.train import core
from sdlib.train.onpolicy import OnPolicy, StepBatch, kl_to_initial


def advantages(sb: StepBatch, cfg) -> torch.Tensor:
    """A_i of every sample: [N]."""
    return group_advantages(sb.rewards, sb.group, std_normalize=cfg.std_normalize)


def needs_every_sample(cfg) -> bool:
    """A sample whose advantage is 0 still has a loss (an entropy or KL term)."""
    return cfg.entropy_coef > 0 or cfg.kl_coef > 0


def surrogate_tokens(model, sb: StepBatch, rows, batch: core.Packed, h, tokens, cfg):
    """GRPO's per-token loss on micro-batch ``rows`` (``batch`` packed, ``h`` and
    ``tokens`` its loss positions) before aggregation, and its per-token statistics."""
    device, head = h.device, core.output_head(model, cfg)
    sequence = core.token_sequences(batch)  # [N]
    st = head.student(h, tokens, k=1, with_entropy=True)
    per_token, clip = clipped_surrogate(
        st.token_logp,
        core.at_tokens(sb.logp_old, sb.student, rows).to(device),
        sb.extra["adv"][rows].to(device)[sequence],  # each token its sample's advantage
        cfg.eps_low,
        cfg.eps_high,
        cfg.dual_clip or None,
        st.entropy,
        cfg.entropy_coef,
    )
    stats = {
        "train/entropy": st.entropy,
        "train/clip_frac": clip["clip"],
        "train/clip_frac_low": clip["clip_low"],
        "train/clip_frac_high": clip["clip_high"],
        "train/ratio_mean": clip["ratio"],
    }
    if cfg.dual_clip > 0:
        stats["train/dual_clip_frac"] = clip["dual_clip"]
    if cfg.kl_coef > 0 or cfg.track_kl:
        k3 = kl_to_initial(model, batch, st.token_logp, head, tokens)
        if cfg.kl_coef > 0:
            per_token = per_token + cfg.kl_coef * k3
        stats["train/kl_initial"] = k3.detach()
    per_token = per_token * core.at_tokens(sb.rollout_weight, sb.student, rows).to(per_token)
    return per_token, stats


class GRPO(OnPolicy):
    def prepare(self, sb: StepBatch) -> None:
        adv = sb.extra["adv"] = advantages(sb, self.cfg)
        every = needs_every_sample(self.cfg)
        sb.active = torch.ones_like(adv, dtype=torch.bool) if every else adv != 0

    def counted(self, sb: StepBatch) -> torch.Tensor:
        return torch.ones_like(sb.active)

    def micro_loss(self, model, sb: StepBatch, rows, norm):
        batch = core.micro(sb.student, rows, self.cfg).to(norm.device)
        h, tokens = core.selected(model, batch)  # [N, H], [N]
        per_token, stats = surrogate_tokens(model, sb, rows, batch, h, tokens, self.cfg)
        sequence = core.token_sequences(batch)
        return aggregate_tokens(per_token, sequence, self.cfg.loss_agg, norm), stats

    def row(self, sb: StepBatch) -> dict:
        zero = float((sb.extra["adv"] == 0).float().mean())
        return {**super().row(sb), "train/zero_adv_frac": zero}
