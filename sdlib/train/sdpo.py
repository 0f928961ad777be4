"""SDPO: distil the policy towards itself conditioned on a correct solution.

    teacher context c_i = the first *other* successful rollout of i's group (reward >= 0.5)
    l_t = w_t * D_alpha( pi(. | x, y<t) || stopgrad pi_teacher(. | x, c_i, y<t) )
    w_t = min(pi(y_t) / pi_old(y_t), is_clip)     (detached)
    L   = token-mean over rollouts that have a demonstration; the others get no loss

D is the generalized JSD over the student's top-k tokens plus one tail bucket (k = 100,
alpha = 0.5 in the reference), one of ``sdlib.losses.DISTILLATION_LOSSES``. The teacher is
one of ``sdlib.models.TEACHERS``: ``initial`` (the frozen start: the LoRA adapter disabled,
or a copy of the initial weights), ``live`` (the current policy), ``ema`` (a copy of the
trainable weights tracking the policy) or ``trust-region`` (initial and current logits
mixed).

The remedies proposed since the study (notebook 07) are options of the same loss, each off
at its default. In general the loss is two terms over the same rollouts,

    L = sum_i a_i sum_t g_it / N_policy + sum_i b_i sum_t u_it l_it / N_distill

with g GRPO's clipped surrogate (``sdlib.train.grpo``), l the distillation above, a_i and
b_i per-sample weights from ``ROUTES[route]`` (``distillation_weight``: TRL's mix; route
``outcome``: SRPO), b_i times sqrt(p (1 - p)) with ``variance_weight`` (SC-SDPO), u_it
exp(-beta H_teacher) with ``teacher_entropy_weight`` (SRPO), and the teacher shown a prefix
of the demonstration with ``demo_prefix`` (after PAINT).
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import torch

from sdlib.grading import extract_answer
from sdlib.head import Head, combine
from sdlib.losses import aggregate_tokens, sdpo_token_loss
from sdlib.models import TEACHERS
from sdlib.prompts import THINKING, chat, strip_thinking, system_of, teacher_prompt
from sdlib.train import core
from sdlib.train.grpo import advantages, needs_every_sample, surrogate_tokens
from sdlib.train.onpolicy import OnPolicy, StepBatch, kl_to_initial


def choose_demonstrations(rewards, group, threshold: float, exclude_self: bool) -> list[int | None]:
    """For each sample, the index of its demonstration: the first successful sample of its
    group (other than itself when ``exclude_self``), or None."""
    ok = (rewards >= threshold).tolist()
    members: dict[int, list[int]] = {}
    for i, g in enumerate(group.tolist()):
        members.setdefault(g, []).append(i)
    out = []
    for i, g in enumerate(group.tolist()):
        found = [j for j in members[g] if ok[j] and not (exclude_self and j == i)]
        out.append(found[0] if found else None)
    return out


def feedback_text(response: str) -> str:
    pred = extract_answer(response)
    if pred is None:
        return "The previous attempt gave no final answer in \\boxed{}."
    return f"The previous attempt answered {pred}, which is incorrect."


class Mix(NamedTuple):
    """Each sample's weight in the two terms of the loss, and which samples each term's
    token-mean counts (``OnPolicy.counted``): all [N]."""

    policy: torch.Tensor  # a_i, GRPO's clipped surrogate
    distill: torch.Tensor  # b_i, the distillation
    policy_counted: torch.Tensor  # bool
    distill_counted: torch.Tensor  # bool


def weighted(sb: StepBatch, taught, demo, cfg) -> Mix:
    """TRL's ``SDPOConfig.distillation_weight`` w: L = (1 - w) GRPO + w distillation, each
    its own token-mean (GRPO's over every sample, the distillation's over the samples with
    a teacher prompt), so w = 1 is SDPO and w = 0 GRPO, exactly."""
    w, every = cfg.distillation_weight, torch.ones_like(taught)
    policy = torch.full(taught.shape, 1.0 - w, dtype=torch.float64)
    return Mix(policy, taught.double() * w, every if w < 1 else ~every, taught)


def by_outcome(sb: StepBatch, taught, demo, cfg) -> Mix:
    """SRPO (Li et al. 2026, arXiv 2604.02288, section 3): z_i = (1 - c_i) m_i routes a
    wrong rollout (c_i = 0) with a right sibling to learn from (m_i = 1) to the
    distillation; every other rollout, right ones and those of all-wrong groups, takes
    GRPO's update. One token-mean over every routed token,
    L = (sum z^GRPO l^GRPO + sum z^SDPO l^SDPO) / (sum z^GRPO + sum z^SDPO), so each branch
    counts in proportion to the tokens it covers. An all-right or all-wrong group is
    GRPO's exactly (advantage 0: no update)."""
    routed = demo & (sb.rewards < cfg.success_threshold)
    every = torch.ones_like(routed)
    return Mix((~routed).double(), routed.double(), every, every)


# The registry ``TrainConfig.route`` chooses from.
ROUTES = {"none": weighted, "outcome": by_outcome}


def question_weights(sb: StepBatch, threshold: float) -> torch.Tensor:
    """SC-SDPO (arXiv 2605.27765): sqrt(p (1 - p)), p the success rate of each sample's
    group (its question's rollouts, the sample itself included): the standard deviation of
    its reward, 0 where every rollout agrees. [N]."""
    right = (sb.rewards >= threshold).double()
    per_group = lambda x: torch.zeros(sb.groups, dtype=x.dtype).index_add_(0, sb.group, x)  # noqa: E731
    p = per_group(right) / per_group(torch.ones_like(right)).clamp(min=1)
    return (p * (1 - p)).sqrt()[sb.group]


def mean_one(values: torch.Tensor, where: torch.Tensor, dist) -> torch.Tensor:
    """``values`` over their mean where ``where`` holds (over every process), 0 elsewhere;
    all 0 when that mean is 0."""
    total = dist.sum(torch.stack([values[where].double().sum(), where.sum().double()]))
    mean = total[0] / total[1].clamp(min=1)
    scaled = values.double() / mean if mean > 0 else torch.zeros_like(values, dtype=torch.float64)
    return torch.where(where, scaled, 0.0).to(values.dtype)


class SDPO(OnPolicy):
    def __init__(self, cfg, policy, data):
        super().__init__(cfg, policy, data)
        self.tok = policy.tokenizer
        self.teacher = TEACHERS[cfg.teacher](policy.model, cfg.ema_rate)
        self.teacher_seconds = 0.0
        self.masked_frac = 0.0

    # phase 4 ------------------------------------------------------------------------
    def batch(self, step: int, dist):
        sb = super().batch(step, dist)
        if self.cfg.teacher_entropy_weight > 0:
            self.entropy_weights(sb)
        return sb

    def prepare(self, sb: StepBatch) -> None:
        cfg, ro = self.cfg, sb.rollouts
        demos = choose_demonstrations(
            sb.rewards, sb.group, cfg.success_threshold, cfg.dont_reprompt_on_self_success
        )
        prompts, taught = [], []
        for i, d in enumerate(demos):
            user = sb.users[ro.prompt_index[i]]
            if d is not None:
                demo = strip_thinking(ro.text[d]) if cfg.strip_demo_thinking else ro.text[d]
                turn = teacher_prompt(user, self.fit_demonstration(user, self.prefix(demo)))
            elif cfg.feedback:
                turn = teacher_prompt(user, feedback=feedback_text(ro.text[i]))
            else:
                turn = None
            taught.append(turn is not None)
            system = system_of(sb.problems[ro.prompt_index[i]])
            text = chat(self.tok, turn or user, THINKING[cfg.thinking], cfg.few_shot, system)
            prompts.append(self.tok(text, add_special_tokens=False)["input_ids"])
        taught = torch.tensor(taught)
        mix = ROUTES[cfg.route](sb, taught, torch.tensor([d is not None for d in demos]), cfg)
        if cfg.variance_weight:
            v = question_weights(sb, cfg.success_threshold)
            weights = mean_one(v, mix.distill > 0, self.dist)
            mix = mix._replace(distill=mix.distill * weights)
        active = mix.distill != 0
        if cfg.policy_loss:
            adv = sb.extra["adv"] = advantages(sb, cfg)
            moves = torch.ones_like(active) if needs_every_sample(cfg) else adv != 0
            active |= (mix.policy != 0) & moves
        sb.active, sb.extra["mix"] = active, mix
        sb.extra["teacher"] = core.pack(prompts, ro.token_ids, self.tok.pad_token_id)
        self.masked_frac = 1.0 - float(taught.float().mean())
        self.teacher_seconds = 0.0

    def prefix(self, demo: str) -> str:
        """The first ``demo_prefix`` share of the demonstration's tokens (rounded up): a
        partial-context teacher. PAINT (arXiv 2604.26573) hides the part of the solution a
        rollout already reproduces; this is its simplest form, a fixed share."""
        if self.cfg.demo_prefix >= 1.0:
            return demo
        ids = self.tok(demo, add_special_tokens=False)["input_ids"]
        return self.tok.decode(ids[: math.ceil(self.cfg.demo_prefix * len(ids))])

    @torch.no_grad()
    def entropy_weights(self, sb: StepBatch) -> None:
        """SRPO's entropy-aware weights (arXiv 2604.02288, section 3.3): each distilled
        token weighs exp(-beta H_t), H_t the teacher's entropy there, over their mean on the
        step's distilled tokens, so confident teacher tokens count more and the loss keeps
        its scale. Computed once, by the teacher at the step's start: [N, T]."""
        cfg, model = self.cfg, self.policy.model
        device, mask = next(model.parameters()).device, sb.student.loss_mask
        entropy = torch.zeros(mask.shape, dtype=torch.float64)
        distilled = (sb.extra["mix"].distill > 0).nonzero().squeeze(1)
        for part in core.micro_batches(len(distilled), cfg.micro_batch):
            rows = distilled[part]
            teacher = core.micro(sb.extra["teacher"], rows, cfg).to(device)
            h, head = self.teacher_side(model, teacher)
            tokens = core.tokens(teacher, teacher.target)
            values = head.teacher(h, tokens, tokens[:, None], with_entropy=True).entropy
            block = torch.zeros(sb.student.rows(rows).loss_mask.shape, dtype=entropy.dtype)
            block[sb.student.rows(rows).loss_mask] = values.cpu().double()
            entropy[rows, : block.shape[1]] = block
        where = mask & (sb.extra["mix"].distill > 0)[:, None]
        beta = cfg.teacher_entropy_weight
        sb.extra["token_weight"] = torch.where(
            where, mean_one((-beta * entropy).exp(), where, self.dist), 1.0
        )
        count = self.dist.sum(torch.stack([entropy[where].sum(), where.sum().double()]))
        self.teacher_entropy = float(count[0] / count[1]) if count[1] else None

    def fit_demonstration(self, user: str, demo: str) -> str:
        """``demo``, cut from its start until the teacher prompt holds at most
        ``max_teacher_prompt_tokens`` (0: no limit; the reference's is 22,528). The end of a
        demonstration holds its answer, so that is what is kept."""
        limit = self.cfg.max_teacher_prompt_tokens
        length = lambda text: len(self.tok(teacher_prompt(user, text))["input_ids"])  # noqa: E731
        ids, cut = self.tok(demo, add_special_tokens=False)["input_ids"], 0
        while limit and length(demo) > limit and cut < len(ids):
            # tokens re-merge at the cut, so measure again rather than trust the count
            cut = min(cut + max(length(demo) - limit, 1), len(ids))
            demo = self.tok.decode(ids[cut:])
        return demo

    def counted(self, sb: StepBatch) -> torch.Tensor:
        mix = sb.extra["mix"]
        return torch.stack([mix.policy_counted, mix.distill_counted])

    # phase 5 ------------------------------------------------------------------------
    def micro_loss(self, model, sb: StepBatch, rows, norm):
        cfg, mix = self.cfg, sb.extra["mix"]
        student = core.micro(sb.student, rows, cfg).to(norm.device)
        h, tokens = core.selected(model, student)  # [N, H], [N]
        sequence = core.token_sequences(student)  # [N]
        per_token, stats = self.distill_tokens(model, sb, rows, student, h, tokens)
        weight = mix.distill[rows].to(per_token)[sequence]
        if "token_weight" in sb.extra:
            weight = weight * core.at_tokens(sb.extra["token_weight"], sb.student, rows).to(weight)
        loss = aggregate_tokens(weight * per_token, sequence, cfg.loss_agg, norm[1])
        if cfg.policy_loss:
            policy, policy_stats = surrogate_tokens(model, sb, rows, student, h, tokens, cfg)
            a = mix.policy[rows].to(policy)[sequence]
            loss = aggregate_tokens(a * policy, sequence, cfg.loss_agg, norm[0]) + loss
            stats.update(policy_stats)  # the same student entropy; the KL once
        return loss, stats

    def distill_tokens(self, model, sb: StepBatch, rows, student, h, tokens):
        """The distillation's per-token loss on micro-batch ``rows``, before weighting and
        aggregation, and its per-token statistics."""
        cfg, device = self.cfg, h.device
        teacher = core.micro(sb.extra["teacher"], rows, cfg).to(device)
        h_teacher, teacher_head = self.teacher_side(model, teacher)  # the same tokens
        old = core.at_tokens(sb.logp_old, sb.student, rows).to(device)
        head = core.output_head(model, cfg)
        per_token, distilled, weight = sdpo_token_loss(
            h,
            h_teacher,
            head,
            tokens,
            old,
            loss=cfg.distill_loss,
            k=cfg.topk,
            alpha=cfg.alpha,
            is_clip=cfg.is_clip or None,
            teacher_head=teacher_head,
        )
        per_token = per_token * core.at_tokens(sb.rollout_weight, sb.student, rows).to(per_token)
        stats = {"train/divergence": distilled.divergence, "train/entropy": distilled.entropy}
        if cfg.track_kl and not cfg.policy_loss:
            stats["train/kl_initial"] = kl_to_initial(
                model, student, distilled.token_logp, head, tokens
            )
        if cfg.is_clip > 0:
            stats["train/is_weight_mean"] = weight
            stats["train/is_clipped_frac"] = (weight >= cfg.is_clip).float()
        return per_token, stats

    def teacher_side(self, model, batch: core.Packed) -> tuple[torch.Tensor, Head]:
        """The teacher's hidden states at the response positions and the head that turns
        them into its logits, no gradient: each view's own output weights, read inside the
        view (full fine-tuning trains the head), views combined (``head.combine``)."""
        start = time.perf_counter()
        parts = []
        with torch.no_grad():
            for coef, view in self.teacher.views(model):
                with view:
                    h, _ = core.selected(model, batch)
                    parts.append((coef, h, core.output_head(model, self.cfg)))
        self.teacher_seconds += time.perf_counter() - start
        return combine(parts)

    def after_step(self, model) -> None:
        self.teacher.update(model)

    def row(self, sb: StepBatch) -> dict:
        row = {
            **super().row(sb),
            "train/masked_frac": self.masked_frac,
            "time/teacher": self.teacher_seconds,
        }
        if self.cfg.policy_loss:
            row["train/zero_adv_frac"] = float((sb.extra["adv"] == 0).float().mean())
        if self.cfg.route != "none":
            row["train/routed_frac"] = float((sb.extra["mix"].distill > 0).float().mean())
        if self.cfg.teacher_entropy_weight > 0:
            row["train/teacher_entropy"] = self.teacher_entropy
        return row

    def state(self) -> dict:
        return {"teacher": self.teacher.state()}

    def load_state(self, state: dict) -> None:
        self.teacher.load_state(state.get("teacher", {}))
