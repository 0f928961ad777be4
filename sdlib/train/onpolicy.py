"""What GRPO and SDPO share: phases 1-4 of the run loop's step (``sdlib.train.loop``).

    1. the step's problems: consecutive slices of per-epoch shuffles (``core.step_items``)
    2. ``rollouts_per_prompt`` responses each from the current policy, seeded per sequence
    3. grades: reward r = 1 if the final answer is right, else 0
    4. the algorithm's ``prepare`` builds its loss inputs (GRPO: advantages; SDPO:
       demonstrations and teacher prompts)

``OnPolicy`` implements the loop's ``Algorithm`` protocol up to ``prepare``,
``micro_loss`` and ``counted``, which each algorithm adds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from sdlib.behavior import behavior_row
from sdlib.evaluate import within_context
from sdlib.grading import grade_response
from sdlib.models import initial_policy, local_folder
from sdlib.problems import Problem
from sdlib.prompts import THINKING, chat, student_turn, system_of
from sdlib.rollout import Rollouts, Sampling, TransformersBackend, VLLMBackend
from sdlib.train import core
from sdlib.train.dist import SINGLE, Dist
from sdlib.train.loop import Batch, token_means


@dataclass(kw_only=True)
class StepBatch(Batch):
    """A step's graded rollouts (N = problems x n samples; groups are the problems)."""

    problems: list[Problem]
    users: list[str]  # student user turns, one per problem
    rollouts: Rollouts
    rewards: torch.Tensor  # [N]
    logp_old: torch.Tensor  # [N, T] pi_old at the loss positions (``ROLLOUT_IS``)
    rollout_weight: torch.Tensor  # [N, T] min(pi_old / pi_sampler, clip); 1 for "sampler"


def rollout_phase(policy, backend, problems, cfg, step, keys=None) -> StepBatch:
    """Phases 2-3: sample, grade, pack. ``keys``: the problems' positions in the step
    (they seed the samples; see ``TransformersBackend.generate``)."""
    tok = policy.tokenizer
    users = [student_turn(p) for p in problems]
    texts = [
        chat(tok, u, THINKING[cfg.thinking], cfg.few_shot, system_of(p))
        for u, p in zip(users, problems, strict=True)
    ]
    sampling = Sampling(
        cfg.max_new_tokens, cfg.temperature, cfg.top_p, seed=core.step_seed(cfg.seed, step)
    )
    ro = backend.generate(texts, n=cfg.rollouts_per_prompt, sampling=sampling, keys=keys)
    rewards = torch.tensor(
        [
            float(grade_response(t, problems[i].answer, rules=cfg.grader).correct)
            for t, i in zip(ro.text, ro.prompt_index, strict=True)
        ]
    )
    return make_step_batch(problems, users, ro, rewards, tok.pad_token_id)


def make_step_batch(problems, users, ro: Rollouts, rewards, pad_id: int) -> StepBatch:
    """Pack graded rollouts for phases 4-5 (every sample active until ``prepare``)."""
    student = core.pack(ro.prompt_ids, ro.token_ids, pad_id)
    logp_old = torch.zeros(student.loss_mask.shape)
    logp_old[student.loss_mask] = torch.tensor([x for lp in ro.logprobs for x in lp])
    return StepBatch(
        student=student,
        group=torch.tensor(ro.prompt_index),
        groups=len(problems),
        active=torch.ones(len(ro), dtype=torch.bool),
        problems=problems,
        users=users,
        rollouts=ro,
        rewards=rewards,
        logp_old=logp_old,
        rollout_weight=torch.ones_like(logp_old),
    )


def rollout_metrics(sb: StepBatch, dist: Dist = SINGLE) -> dict:
    """The step's rollout metrics. Means over samples are the run loop's to average over
    processes (each holds as many samples); the spread of the rewards is taken over every
    process's here."""
    rows = [
        behavior_row(t, token_ids=ids)
        for t, ids in zip(sb.rollouts.text, sb.rollouts.token_ids, strict=True)
    ]
    solved = torch.zeros(len(sb.problems)).index_add_(0, sb.group, sb.rewards)
    mean = lambda key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    r = sb.rewards.double()
    n, total, squares = dist.sum(torch.stack([r.new_tensor(len(r)), r.sum(), r.square().sum()]))
    spread = (squares - total**2 / n) / (n - 1) if n > 1 else torch.tensor(0.0)
    return {
        "rollout/reward_mean": float(sb.rewards.mean()),
        "rollout/reward_std": float(spread.clamp(min=0).sqrt()),
        "rollout/success_group_frac": float((solved > 0).float().mean()),
        "rollout/len_tokens": mean("len_tokens"),
        "rollout/epi_total": mean("epi_total"),
        "rollout/epi_total_word": mean("epi_total_word"),
        "rollout/truncated_frac": sum(f == "length" for f in sb.rollouts.finish_reason) / len(rows),
        "train/active_frac": float(sb.active.float().mean()),
    }


def make_backend(cfg, policy):
    """The rollout backend: the policy itself (transformers) or a vLLM engine on the base
    weights that serves the current LoRA adapter or weights (``sync_backend`` each step)."""
    if cfg.backend == "vllm":
        return VLLMBackend.from_model(
            local_folder(cfg.model),
            policy.tokenizer,
            dtype="bfloat16",
            max_lora_rank=cfg.lora_r,
            lora=cfg.finetune == "lora",
        )
    return TransformersBackend(policy.model, policy.tokenizer, cfg.gen_batch, progress=False)


def sync_backend(backend, model, folder: Path, step: int) -> None:
    """Hand the current adapter, or every weight (full fine-tuning: written as
    safetensors each step after the first, when the engine holds them already), to a
    backend that holds its own copy of the weights."""
    if not hasattr(backend, "set_adapter"):
        return
    if hasattr(model, "peft_config"):
        model.save_pretrained(folder / "rollout_adapter")
        backend.set_adapter(folder / "rollout_adapter")
    elif step > 0:
        model.save_pretrained(folder / "rollout_weights")
        backend.load_weights(folder / "rollout_weights")


def fitting(problems: list[Problem], policy, cfg) -> list[Problem]:
    """The problems whose student prompt leaves ``max_new_tokens`` in the model's context
    (the others are reported and skipped); an error when none is left."""
    tok = policy.tokenizer
    context = getattr(policy.model.config, "max_position_embeddings", None)
    texts = [
        chat(tok, student_turn(p), THINKING[cfg.thinking], cfg.few_shot, system_of(p))
        for p in problems
    ]
    kept = [
        problems[i]
        for i in within_context(problems, texts, tok, cfg.max_new_tokens, context, "training data")
    ]
    if problems and not kept:
        raise ValueError(
            f"no training problem of {cfg.data} fits the model's {context}-token context "
            f"with max_new_tokens = {cfg.max_new_tokens}; lower max_new_tokens"
        )
    return kept


def sampler_log_probs(model, sb: StepBatch, cfg) -> None:
    """pi_old = the sampler's own log-probs (kept from the rollout); no extra weight."""


@torch.no_grad()
def trainer_log_probs(model, sb: StepBatch, cfg) -> None:
    """pi_old recomputed by the trainer (before this step's updates, at the rollout
    temperature), each token weighted by w = min(exp(pi_old - pi_sampler), rollout_is_clip),
    detached: the reference's token-level rollout correction. With an exact sampler, as the
    transformers backend in float64, w = 1 and pi_old equals the sampler's log-probs."""
    device, head = next(model.parameters()).device, core.output_head(model, cfg)
    recomputed = torch.zeros_like(sb.logp_old)
    for part in core.micro_batches(len(sb.group), cfg.micro_batch):
        rows = torch.arange(len(sb.group))[part]
        h, tokens = core.selected(model, core.micro(sb.student, rows, cfg).to(device))
        mask = sb.student.rows(rows).loss_mask  # where those tokens sit in the step's layout
        block = torch.zeros(mask.shape, dtype=recomputed.dtype)
        block[mask] = head.student(h, tokens, k=1).token_logp.cpu().to(block)
        recomputed[rows, : block.shape[1]] = block
    gap = (recomputed - sb.logp_old).clamp(-20, 20)
    sb.rollout_weight = torch.where(
        sb.student.loss_mask, gap.exp().clamp(max=cfg.rollout_is_clip), 1
    )
    sb.logp_old = recomputed


def kl_to_initial(model, batch: core.Packed, token_logp, head, tokens) -> torch.Tensor:
    """How far the policy has moved, per loss token: the k3 estimate of KL(pi || pi_0),
    exp(q - p) - (q - p) - 1 with p, q the token's log-prob under pi (``token_logp``,
    gradients flow through it) and under the initial policy (``initial_policy``, no
    gradient) on the same student prompt; unbiased and >= 0: [N]."""
    with torch.no_grad(), initial_policy(model):
        h_ref, _ = core.selected(model, batch)
        initial = core.output_head(model, head=head)  # full fine-tuning trains the head
        ref = initial.teacher(h_ref, tokens, tokens[:, None]).token_logp
    d = ref - token_logp
    return d.exp() - d - 1


# The registry ``TrainConfig.rollout_is`` chooses from.
ROLLOUT_IS = {"sampler": sampler_log_probs, "token": trainer_log_probs}


class OnPolicy:
    """Phases 1-4 and the bookkeeping of the loop's ``Algorithm`` for GRPO and SDPO."""

    def __init__(self, cfg, policy, data: list[Problem]):
        self.cfg, self.policy = cfg, policy
        self.problems = fitting(data, policy, cfg)
        self.backend = make_backend(cfg, policy)
        self.rollout_seconds = 0.0
        self.dist = SINGLE  # the processes a step's statistics run over (``batch`` sets it)

    def steps(self) -> int:
        return self.cfg.steps

    def batch(self, step: int, dist: Dist) -> StepBatch:
        start, cfg, self.dist = time.perf_counter(), self.cfg, dist
        problems = core.step_items(self.problems, step, cfg.prompts_per_step, cfg.seed)
        sync_backend(self.backend, self.policy.model, Path(cfg.out), step)
        mine = dist.shard(len(problems))
        keys = [step * cfg.prompts_per_step + i for i in mine]
        sb = rollout_phase(self.policy, self.backend, [problems[i] for i in mine], cfg, step, keys)
        self.rollout_seconds = time.perf_counter() - start
        ROLLOUT_IS[cfg.rollout_is](self.policy.model, sb, cfg)
        self.prepare(sb)
        return sb

    def prepare(self, sb: StepBatch) -> None:
        raise NotImplementedError

    def row(self, sb: StepBatch) -> dict:
        row = {**rollout_metrics(sb, self.dist), "time/rollout": self.rollout_seconds}
        if self.cfg.rollout_is == "token":
            weights = {"w": [sb.rollout_weight[sb.student.loss_mask].double()]}
            row["rollout/is_weight_mean"] = token_means(weights, self.dist)["w"]
        return row

    def samples(self, sb: StepBatch, step: int) -> list[dict]:
        rows = []
        for i, text in enumerate(sb.rollouts.text):
            p = sb.problems[sb.rollouts.prompt_index[i]]
            rows.append(
                {
                    "step": step,
                    "sample": i,  # (step, sample) names a row once: a repeated line shows
                    "problem_id": p.id,
                    "answer": p.answer,
                    "reward": float(sb.rewards[i]),
                    "active": bool(sb.active[i]),
                    **behavior_row(text, token_ids=sb.rollouts.token_ids[i]),
                    "text": text,
                }
            )
        return rows

    def after_step(self, model) -> None:
        pass

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass
