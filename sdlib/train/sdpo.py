"""SDPO: distil the policy towards itself conditioned on a correct solution.

    teacher context c_i = the first *other* successful rollout of i's group (reward >= 0.5)
    l_t = w_t * D_alpha( pi(. | x, y<t) || stopgrad pi_teacher(. | x, c_i, y<t) )
    w_t = min(pi(y_t) / pi_old(y_t), is_clip)     (detached)
    L   = token-mean over rollouts that have a demonstration; the others get no loss

D is the generalized JSD over the student's top-k tokens plus one tail bucket (k = 100,
alpha = 0.5 in the reference), one of ``sdlib.losses.DISTILLATION_LOSSES``. The teacher is
one of ``sdlib.models.TEACHERS``: ``initial`` (the frozen start: the LoRA adapter disabled,
or a copy of the initial weights), ``live`` (the current policy) or ``ema`` (a copy of the
trainable weights tracking the policy).
"""

from __future__ import annotations

import time

import torch

from sdlib.grading import extract_answer
from sdlib.losses import aggregate_tokens, sdpo_token_loss
from sdlib.models import TEACHERS
from sdlib.prompts import THINKING, chat, strip_thinking, system_of, teacher_prompt
from sdlib.train import core
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


class SDPO(OnPolicy):
    def __init__(self, cfg, policy, data):
        super().__init__(cfg, policy, data)
        self.tok = policy.tokenizer
        self.teacher = TEACHERS[cfg.teacher](policy.model, cfg.ema_rate)
        self.teacher_seconds = 0.0
        self.masked_frac = 0.0

    # phase 4 ------------------------------------------------------------------------
    def prepare(self, sb: StepBatch) -> None:
        cfg, ro = self.cfg, sb.rollouts
        demos = choose_demonstrations(
            sb.rewards, sb.group, cfg.success_threshold, cfg.dont_reprompt_on_self_success
        )
        prompts, active = [], []
        for i, d in enumerate(demos):
            user = sb.users[ro.prompt_index[i]]
            if d is not None:
                demo = strip_thinking(ro.text[d]) if cfg.strip_demo_thinking else ro.text[d]
                turn = teacher_prompt(user, self.fit_demonstration(user, demo))
            elif cfg.feedback:
                turn = teacher_prompt(user, feedback=feedback_text(ro.text[i]))
            else:
                turn = None
            active.append(turn is not None)
            system = system_of(sb.problems[ro.prompt_index[i]])
            text = chat(self.tok, turn or user, THINKING[cfg.thinking], cfg.few_shot, system)
            prompts.append(self.tok(text, add_special_tokens=False)["input_ids"])
        sb.active = torch.tensor(active)
        sb.extra["teacher"] = core.pack(prompts, ro.token_ids, self.tok.pad_token_id)
        self.masked_frac = 1.0 - float(sb.active.float().mean())
        self.teacher_seconds = 0.0

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
        return sb.active

    # phase 5 ------------------------------------------------------------------------
    def micro_loss(self, model, sb: StepBatch, rows, norm):
        cfg, device = self.cfg, norm.device
        student = core.micro(sb.student, rows, cfg).to(device)
        h, tokens = core.selected(model, student)  # [N, H], [N]
        teacher = core.micro(sb.extra["teacher"], rows, cfg).to(device)
        h_teacher = self.teacher_hidden(model, teacher)  # [N, H], the same tokens
        old = core.at_tokens(sb.logp_old, sb.student, rows).to(device)
        per_token, distilled, weight = sdpo_token_loss(
            h,
            h_teacher,
            core.output_head(model, cfg),
            tokens,
            old,
            loss=cfg.distill_loss,
            k=cfg.topk,
            alpha=cfg.alpha,
            is_clip=cfg.is_clip or None,
        )
        per_token = per_token * core.at_tokens(sb.rollout_weight, sb.student, rows).to(per_token)
        stats = {"train/divergence": distilled.divergence, "train/entropy": distilled.entropy}
        if cfg.track_kl:
            stats["train/kl_initial"] = kl_to_initial(
                model, student, distilled.token_logp, core.output_head(model, cfg), tokens
            )
        if cfg.is_clip > 0:
            stats["train/is_weight_mean"] = weight
            stats["train/is_clipped_frac"] = (weight >= cfg.is_clip).float()
        return aggregate_tokens(per_token, core.token_sequences(student), cfg.loss_agg, norm), stats

    def teacher_hidden(self, model, batch: core.Packed) -> torch.Tensor:
        """The teacher's final hidden states at the response positions, no gradient: [N, H]."""
        start = time.perf_counter()
        with torch.no_grad(), self.teacher.view(model):
            h, _ = core.selected(model, batch)
        self.teacher_seconds += time.perf_counter() - start
        return h

    def after_step(self, model) -> None:
        self.teacher.update(model)

    def row(self, sb: StepBatch) -> dict:
        return {
            **super().row(sb),
            "train/masked_frac": self.masked_frac,
            "time/teacher": self.teacher_seconds,
        }

    def state(self) -> dict:
        return {"teacher": self.teacher.state()}

    def load_state(self, state: dict) -> None:
        self.teacher.load_state(state.get("teacher", {}))
