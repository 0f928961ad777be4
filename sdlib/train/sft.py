"""Supervised fine-tuning (LoRA) on (prompt, response) pairs, loss on response tokens only.

    L = - (1 / N) sum_{i, t in response_i} log pi(y_{i,t} | x_i, y_{i,<t})    (token-mean)

The study's D_ug / D_sg sets are jsonl files of {"prompt": user turn, "response": text}
written by the context-richness experiment (``sdlib.experiments.context``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sdlib.losses import aggregate, loss_normalizer, scatter_tokens, student_head_stats
from sdlib.prompts import THINKING, chat
from sdlib.train import core
from sdlib.train.onpolicy import load_training_policy, step_problems


def read_pairs(paths: list[str]) -> list[dict]:
    """(prompt, response) rows; a malformed row is an error naming its file and line."""
    pairs = []
    for path in paths:
        for n, line in enumerate(Path(path).read_text().splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row.get("prompt"), str) or not isinstance(row.get("response"), str):
                raise ValueError(
                    f"{path}:{n}: an SFT row needs string 'prompt' and 'response', "
                    f"got keys {sorted(row)}"
                )
            pairs.append(row)
    if not pairs:
        raise ValueError(
            f"no SFT pairs in {paths}; write them with the context-richness "
            f"experiment (D_ug / D_sg) or as jsonl of prompt/response"
        )
    return pairs


def encode_pairs(pairs: list[dict], tok, thinking, few_shot=False) -> tuple[list, list]:
    prompts, responses = [], []
    for row in pairs:
        text = chat(tok, row["prompt"], thinking, few_shot)
        prompts.append(tok(text, add_special_tokens=False)["input_ids"])
        responses.append(
            tok(row["response"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        )
    return prompts, responses


def sft_step(model, batch: core.Packed, cfg, opt, sched) -> dict:
    device = next(model.parameters()).device
    norm = loss_normalizer(batch.loss_mask, cfg.loss_agg).to(device)
    opt.zero_grad(set_to_none=True)
    total = 0.0
    for part in core.micro_batches(len(batch.input_ids), cfg.micro_batch):
        micro = batch.rows(torch.arange(len(batch.input_ids))[part]).to(device)
        h, tokens = core.selected(model, micro)
        weight, bias = core.head(model)
        st = student_head_stats(h, weight, tokens, k=1, bias=bias, chunk_size=cfg.loss_chunk)
        loss = aggregate(
            scatter_tokens(-st.token_logp, micro.loss_mask), micro.loss_mask, cfg.loss_agg, norm
        )
        loss.backward()
        total += float(loss.detach())
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or float("inf")))
    lr = sched.get_last_lr()[0]
    opt.step()
    sched.step()
    return {"train/loss": total, "train/grad_norm": grad_norm, "train/lr": lr}


def train_sft(cfg) -> core.RunDir:
    """Run (or resume) ``cfg.steps`` SFT updates of ``prompts_per_step`` pairs each."""
    run = core.RunDir(cfg.out)
    run.save_params(cfg)
    policy = load_training_policy(cfg)
    tok, model = policy.tokenizer, policy.model
    pairs = read_pairs(cfg.data)
    prompts, responses = encode_pairs(pairs, tok, THINKING[cfg.thinking], cfg.few_shot)
    opt, sched = core.make_optimizer(model, cfg)
    start = 0
    if (last := run.latest()) is not None:
        start = core.load_checkpoint(last, model, opt, sched)["step"]
        run.truncate("metrics.jsonl", start - 1)
    steps = min(cfg.steps, -(-cfg.epochs * len(pairs) // cfg.prompts_per_step))
    index = list(range(len(pairs)))
    model.train()
    for step in tqdm(range(start, steps), desc="sft steps", initial=start, total=steps):
        t0 = time.perf_counter()
        pick = step_problems(index, step, cfg.prompts_per_step, cfg.seed)
        batch = core.pack(
            [prompts[i] for i in pick], [responses[i] for i in pick], tok.pad_token_id
        )
        row = {
            "step": step,
            **sft_step(model, batch, cfg, opt, sched),
            "train/tokens": int(batch.loss_mask.sum()),
            "time/step": time.perf_counter() - t0,
        }
        run.append("metrics.jsonl", [row])
        if (step + 1) % cfg.save_every == 0 or step + 1 == steps:
            core.save_checkpoint(run, step + 1, model, opt, sched, {})
    return run
