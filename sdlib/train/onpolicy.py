"""The on-policy step GRPO and SDPO share, and the run loop around it.

One step (DESIGN.md's data flow):
    1. take the step's problems (a pure function of seed and step: resumes exactly)
    2. roll out ``rollouts_per_prompt`` responses each with the current policy
    3. grade them: reward r = 1 if the final answer is right, else 0
    4. the algorithm builds its loss inputs (GRPO: advantages; SDPO: demonstrations)
    5. optimizer updates over mini-batches of prompts, micro-batches accumulated
    6. one metrics row; samples; checkpoint every ``save_every`` steps

The algorithms (``grpo.py``, ``sdpo.py``) differ only in ``prepare`` (phase 4) and
``micro_loss`` (the loss of a micro-batch, phase 5).
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from sdlib import config as cfgmod
from sdlib.behavior import behavior_row
from sdlib.grading import grade_response
from sdlib.losses import loss_normalizer
from sdlib.models import LoraSpec, load_policy
from sdlib.problems import Problem
from sdlib.prompts import THINKING, chat, student_prompt
from sdlib.rollout import Rollouts, Sampling, TransformersBackend, VLLMBackend
from sdlib.train import core
from sdlib.train.dist import SINGLE, Dist
from sdlib.train.metrics import METRICS, expected_keys, rollout_metrics


@dataclass
class StepBatch:
    """Everything phase 4-5 need about one step's samples (N = problems x n)."""

    problems: list[Problem]
    users: list[str]  # student user turns, one per problem
    rollouts: Rollouts
    rewards: torch.Tensor  # [N]
    group: torch.Tensor  # [N] problem index of each sample
    student: core.Packed  # [N, T]
    logp_old: torch.Tensor  # [N, T] rollout log-probs at the loss positions
    active: torch.Tensor  # [N] bool: sample takes part in the loss
    extra: dict = field(default_factory=dict)


def step_seed(seed: int, step: int) -> int:
    digest = hashlib.sha256(f"{seed}:{step}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def step_problems(problems: list[Problem], step: int, size: int, seed: int) -> list[Problem]:
    """The ``size`` problems of ``step``: consecutive slices of per-epoch shuffles."""
    orders: dict[int, list[int]] = {}
    out = []
    for i in range(step * size, (step + 1) * size):
        epoch, pos = divmod(i, len(problems))
        if epoch not in orders:
            orders[epoch] = list(range(len(problems)))
            random.Random(seed * 100_003 + epoch).shuffle(orders[epoch])
        out.append(problems[orders[epoch][pos]])
    return out


def rollout_phase(policy, backend, problems, cfg, step, keys=None) -> StepBatch:
    """Phases 2-3: sample, grade, pack. ``keys``: the problems' positions in the step
    (they seed the samples; see ``TransformersBackend.generate``)."""
    tok = policy.tokenizer
    users = [student_prompt(p.question) for p in problems]
    texts = [chat(tok, u, THINKING[cfg.thinking], cfg.few_shot) for u in users]
    sampling = Sampling(
        cfg.max_new_tokens, cfg.temperature, cfg.top_p, seed=step_seed(cfg.seed, step)
    )
    ro = backend.generate(texts, n=cfg.rollouts_per_prompt, sampling=sampling, keys=keys)
    rewards = torch.tensor(
        [
            float(grade_response(t, problems[i].answer).correct)
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
        problems,
        users,
        ro,
        rewards,
        torch.tensor(ro.prompt_index),
        student,
        logp_old,
        active=torch.ones(len(ro), dtype=torch.bool),
    )


def update_phase(algo, model, sb: StepBatch, opt, sched, cfg, dist: Dist = SINGLE) -> dict:
    """Phase 5: one optimizer update per mini-batch of prompts, micro-batches accumulated.

    Each micro-batch loss is divided by its mini-batch's normalizer (summed over
    processes), so the accumulated gradient equals the gradient of the whole mini-batch's
    aggregated loss.
    """
    device = next(model.parameters()).device
    stats: dict[str, list[float]] = {}
    model.train()
    groups = range(len(sb.problems))
    size = (cfg.prompts_per_update or cfg.prompts_per_step) // dist.world  # this process's
    for lo in range(0, len(sb.problems), size):
        in_update = torch.isin(sb.group, torch.tensor(groups[lo : lo + size]))
        counted = sb.student.loss_mask[in_update & algo.counted(sb)]
        norm = loss_normalizer(counted, cfg.loss_agg) if counted.numel() else torch.tensor(0.0)
        norm = dist.sum(norm.float())
        rows = (in_update & sb.active).nonzero().squeeze(1)
        opt.zero_grad(set_to_none=True)
        for part in core.micro_batches(len(rows), cfg.micro_batch):
            loss, micro = algo.micro_loss(model, sb, rows[part], norm.to(device))
            loss.backward()
            for k, v in micro.items():
                stats.setdefault(k, []).append(float(v))
        params = [p for p in model.parameters() if p.requires_grad]
        dist.sum_grads(params)
        clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        stats.setdefault("train/grad_norm", []).append(
            float(torch.nn.utils.clip_grad_norm_(params, clip))
        )
        stats.setdefault("train/lr", []).append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
        algo.after_update(model)
    return {k: sum(v) / len(v) for k, v in stats.items()}


def sample_rows(sb: StepBatch, step: int, tok) -> list[dict]:
    rows = []
    for i, text in enumerate(sb.rollouts.text):
        p = sb.problems[sb.rollouts.prompt_index[i]]
        rows.append(
            {
                "step": step,
                "problem_id": p.id,
                "answer": p.answer,
                "reward": float(sb.rewards[i]),
                "active": bool(sb.active[i]),
                **behavior_row(text, token_ids=sb.rollouts.token_ids[i]),
                "text": text,
            }
        )
    return rows


def make_backend(cfg, policy):
    """The rollout backend: the policy itself (transformers) or a vLLM engine on the base
    weights that serves the current LoRA adapter (``sync_backend`` each step)."""
    if cfg.backend == "vllm":
        from sdlib.models import local_folder

        return VLLMBackend.from_model(
            local_folder(cfg.model), policy.tokenizer, dtype="bfloat16", max_lora_rank=cfg.lora_r
        )
    return TransformersBackend(policy.model, policy.tokenizer, cfg.gen_batch, progress=False)


def sync_backend(backend, model, run) -> None:
    """Hand the current adapter to a backend that holds its own copy of the weights."""
    if hasattr(backend, "set_adapter"):
        folder = run.path / "rollout_adapter"
        model.save_pretrained(folder)
        backend.set_adapter(folder)


def load_training_policy(cfg):
    torch.manual_seed(cfg.seed)  # LoRA A init
    return load_policy(
        cfg.model,
        dtype=cfg.dtype,
        device=cfg.device,
        lora=LoraSpec(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout),
        load_in_4bit=cfg.load_in_4bit,
        gradient_checkpointing=cfg.gradient_checkpointing,
    )


def train_on_policy(cfg: cfgmod.TrainConfig, problems: list[Problem], algo_cls) -> core.RunDir:
    """Run (or resume) ``cfg.steps`` on-policy steps of ``algo_cls`` in ``cfg.out``."""
    dist = Dist.from_env(cfg.device)
    dist.check(cfg)
    run = core.RunDir(cfg.out)
    if dist.main:
        run.save_params(cfg)
    policy = load_training_policy(cfg)
    algo = algo_cls(cfg, policy)
    opt, sched = core.make_optimizer(policy.model, cfg)
    start = 0
    if (last := run.latest()) is not None:
        state = core.load_checkpoint(last, policy.model, opt, sched)
        algo.load_state(state)
        start = state["step"]
        if dist.main:
            for name in ("metrics.jsonl", "samples.jsonl"):
                run.truncate(name, start - 1)
    backend = make_backend(cfg, policy)
    steps = range(start, cfg.steps)
    for step in tqdm(
        steps, desc=f"{cfg.algo} steps", initial=start, total=cfg.steps, disable=not dist.main
    ):
        row = one_step(algo, policy, backend, problems, cfg, step, opt, sched, run, dist)
        if dist.main:
            run.append("metrics.jsonl", [row])
        if dist.main and ((step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps):
            core.save_checkpoint(run, step + 1, policy.model, opt, sched, algo.state())
    return run


def one_step(algo, policy, backend, problems, cfg, step, opt, sched, run, dist=SINGLE) -> dict:
    t0 = time.perf_counter()
    batch = step_problems(problems, step, cfg.prompts_per_step, cfg.seed)
    sync_backend(backend, policy.model, run)
    mine = dist.shard(len(batch))
    keys = [step * cfg.prompts_per_step + i for i in mine]
    sb = rollout_phase(policy, backend, [batch[i] for i in mine], cfg, step, keys)
    t1 = time.perf_counter()
    algo.prepare(sb)
    stats = update_phase(algo, policy.model, sb, opt, sched, cfg, dist)
    t2 = time.perf_counter()
    if dist.main and cfg.sample_every and step % cfg.sample_every == 0:
        run.append("samples.jsonl", sample_rows(sb, step, policy.tokenizer))
    row = {
        "step": step,
        **rollout_metrics(sb),
        **stats,
        **algo.step_stats(sb),
        "time/rollout": t1 - t0,
        "time/update": t2 - t1,
        "time/step": time.perf_counter() - t0,
    }
    # a step where no sample entered the loss has no loss figures: say so with NaN
    row = {
        k: row.get(k, math.nan) for k in sorted(expected_keys(cfg.algo), key=list(METRICS).index)
    }
    return dist.mean_row(row)
