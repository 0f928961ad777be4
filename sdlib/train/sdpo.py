"""SDPO: distil the policy towards itself conditioned on a correct solution.

    teacher context c_i = the first *other* successful rollout of i's group (reward >= 0.5)
    l_t = w_t * D_alpha( pi(. | x, y<t) || stopgrad pi_teacher(. | x, c_i, y<t) )
    w_t = min(pi(y_t) / pi_old(y_t), is_clip)     (detached)
    L   = token-mean over rollouts that have a demonstration; the others get no loss

D is the generalized JSD over the student's top-k tokens plus one tail bucket (k = 100,
alpha = 0.5 in the reference). Teachers:
    initial  the LoRA adapter disabled: exactly the frozen initial policy, no extra memory
    live     the current policy, no gradient
    ema      LoRA weights theta_T <- (1 - rate) theta_T + rate theta after every update.
             A and B are averaged separately, so the teacher's weight delta is
             B_T A_T, *not* the EMA of the merged deltas B A (the product is bilinear).
             At rate 0 it stays the LoRA init (B = 0): the initial policy, as in the paper.
"""

from __future__ import annotations

import contextlib
import time

import torch

from sdlib.grading import extract_answer
from sdlib.losses import (
    DISTILLATION_LOSSES,
    aggregate,
    importance_weight,
    scatter_tokens,
    select_tokens,
    student_head_stats,
    teacher_head_stats,
)
from sdlib.models import initial_policy
from sdlib.prompts import THINKING, chat, teacher_prompt, without_thinking
from sdlib.train import core


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


class SDPO:
    def __init__(self, cfg, policy):
        self.cfg, self.tok = cfg, policy.tokenizer
        self.ema = None
        if cfg.teacher == "ema":
            self.ema = add_ema_adapter(policy.model)
        self.teacher_seconds = 0.0
        self.masked_frac = 0.0

    # phase 4 ------------------------------------------------------------------------
    def prepare(self, sb) -> None:
        cfg, ro = self.cfg, sb.rollouts
        demos = choose_demonstrations(
            sb.rewards, sb.group, cfg.success_threshold, cfg.dont_reprompt_on_self_success
        )
        prompts, active = [], []
        for i, d in enumerate(demos):
            user = sb.users[ro.prompt_index[i]]
            if d is not None:
                demo = without_thinking(ro.text[d]) if cfg.strip_demo_thinking else ro.text[d]
                turn = teacher_prompt(user, demo)
            elif cfg.feedback:
                turn = teacher_prompt(user, feedback=feedback_text(ro.text[i]))
            else:
                turn = None
            active.append(turn is not None)
            text = chat(self.tok, turn or user, THINKING[cfg.thinking], cfg.few_shot)
            prompts.append(self.tok(text, add_special_tokens=False)["input_ids"])
        sb.active = torch.tensor(active)
        sb.extra["teacher"] = core.pack(prompts, ro.token_ids, self.tok.pad_token_id)
        self.masked_frac = 1.0 - float(sb.active.float().mean())
        self.teacher_seconds = 0.0

    def counted(self, sb) -> torch.Tensor:
        return sb.active

    # phase 5 ------------------------------------------------------------------------
    def micro_loss(self, model, sb, rows, norm):
        cfg, device = self.cfg, norm.device
        student = sb.student.rows(rows).to(device)
        mask = student.loss_mask
        h, tokens = core.selected(model, student)
        weight, bias = core.head(model)
        k = None if cfg.distill_loss == "full" or cfg.topk == 0 else cfg.topk
        st = student_head_stats(
            h, weight, tokens, k, bias=bias, with_entropy=True, **core.head_options(cfg)
        )
        tt = self.teacher_stats(model, sb.extra["teacher"].rows(rows).to(device), st, weight, bias)
        name = "topk-renorm" if k is None else cfg.distill_loss
        divergence = DISTILLATION_LOSSES[name](st, tt, cfg.alpha)  # [N]
        old = select_tokens(sb.logp_old[rows, : mask.shape[1]].to(device), mask)
        w = (
            importance_weight(st.token_logp, old, cfg.is_clip)
            if cfg.is_clip > 0
            else torch.ones_like(divergence)
        )
        loss = aggregate(scatter_tokens(w * divergence, mask), mask, cfg.loss_agg, norm)
        return loss, {
            "train/loss": loss.detach(),
            "train/divergence": divergence.mean().detach(),
            "train/entropy": st.entropy.mean().detach(),
            "train/is_weight_mean": w.mean(),
            "train/is_clipped_frac": (w >= cfg.is_clip).float().mean()
            if cfg.is_clip > 0
            else torch.tensor(0.0),
        }

    def teacher_stats(self, model, batch, st, weight, bias):
        start = time.perf_counter()
        with torch.no_grad(), self.teacher_view(model):
            h, tokens = core.selected(model, batch)
            out = teacher_head_stats(
                h, weight, tokens, st.topk_index, bias=bias, **core.head_options(self.cfg)
            )
        self.teacher_seconds += time.perf_counter() - start
        return out

    @contextlib.contextmanager
    def teacher_view(self, model):
        if self.cfg.teacher == "initial":
            with initial_policy(model):
                yield
        elif self.cfg.teacher == "live":
            yield
        else:
            # a second adapter, not swapped weights: the student's graph keeps its tensors
            model.set_adapter(EMA)
            try:
                yield
            finally:
                model.set_adapter("default")
                for p in self.ema.values():
                    p.requires_grad_(False)

    def after_update(self, model) -> None:
        if self.ema is None:
            return
        rate = self.cfg.ema_rate
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, p in self.ema.items():
                p.mul_(1 - rate).add_(params[name.replace(f".{EMA}.", ".default.")], alpha=rate)

    def step_stats(self, sb) -> dict:
        return {"train/masked_frac": self.masked_frac, "time/teacher": self.teacher_seconds}

    def state(self) -> dict:
        return {
            "ema": None
            if self.ema is None
            else {n: p.detach().clone() for n, p in self.ema.items()}
        }

    def load_state(self, state: dict) -> None:
        if self.ema is not None and state.get("ema") is not None:
            with torch.no_grad():
                for n, v in state["ema"].items():
                    self.ema[n].copy_(v)


EMA = "ema"


def add_ema_adapter(model) -> dict[str, torch.nn.Parameter]:
    """A frozen copy of the LoRA adapter, named "ema", starting equal to "default"."""
    model.add_adapter(EMA, model.peft_config["default"])
    model.set_adapter("default")
    params = dict(model.named_parameters())
    ema = {n: p for n, p in params.items() if f".{EMA}." in n}
    with torch.no_grad():
        for n, p in ema.items():
            p.copy_(params[n.replace(f".{EMA}.", ".default.")])
            p.requires_grad_(False)
    return ema
