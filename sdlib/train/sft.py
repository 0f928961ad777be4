"""Supervised fine-tuning (LoRA) on (prompt, response) pairs, loss on response tokens only.

    L = - (1 / N) sum_{i, t in response_i} log pi(y_{i,t} | x_i, y_{i,<t})    (token-mean)

The study's D_ug / D_sg sets are jsonl files of {"prompt": user turn, "response": text}
written by the context-richness experiment (``sdlib.experiments.context``). Each step takes
``prompts_per_step`` pairs (per-epoch shuffles, as the on-policy problems) and makes one
update per ``prompts_per_update`` of them through the shared run loop.
"""

from __future__ import annotations

import math

import torch

from sdlib.losses import aggregate_tokens
from sdlib.prompts import THINKING, chat
from sdlib.train import core
from sdlib.train.dist import Dist
from sdlib.train.loop import Batch


def encode_pairs(pairs: list[dict], tok, thinking, few_shot=False) -> tuple[list, list]:
    prompts, responses = [], []
    for row in pairs:
        text = chat(tok, row["prompt"], thinking, few_shot)
        prompts.append(tok(text, add_special_tokens=False)["input_ids"])
        responses.append(
            tok(row["response"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        )
    return prompts, responses


class SFT:
    """The loop's ``Algorithm`` for supervised pairs (no rollouts, every pair in the loss)."""

    def __init__(self, cfg, policy, data: list[dict]):
        self.cfg, self.pad = cfg, policy.tokenizer.pad_token_id
        self.prompts, self.responses = encode_pairs(
            data, policy.tokenizer, THINKING[cfg.thinking], cfg.few_shot
        )

    def steps(self) -> int:
        """``steps``, or fewer when ``epochs`` passes over the pairs take fewer."""
        return min(
            self.cfg.steps,
            math.ceil(self.cfg.epochs * len(self.prompts) / self.cfg.prompts_per_step),
        )

    def batch(self, step: int, dist: Dist) -> Batch:
        index = list(range(len(self.prompts)))
        picked = core.step_items(index, step, self.cfg.prompts_per_step, self.cfg.seed)
        mine = [picked[i] for i in dist.shard(len(picked))]
        student = core.pack(
            [self.prompts[i] for i in mine], [self.responses[i] for i in mine], self.pad
        )
        n = len(mine)
        return Batch(
            student=student, group=torch.arange(n), groups=n, active=torch.ones(n, dtype=torch.bool)
        )

    def counted(self, batch: Batch) -> torch.Tensor:
        return batch.active

    def micro_loss(self, model, batch: Batch, rows, norm):
        micro = core.micro(batch.student, rows, self.cfg).to(norm.device)
        h, tokens = core.selected(model, micro)
        # teacher-forced pairs are not samples: score them at temperature 1
        st = core.output_head(model, self.cfg, temperature=1.0).student(h, tokens, k=1)
        sequence = core.token_sequences(micro)
        return aggregate_tokens(-st.token_logp, sequence, self.cfg.loss_agg, norm), {}

    def after_step(self, model) -> None:
        pass

    def row(self, batch: Batch) -> dict:
        return {}

    def samples(self, batch: Batch, step: int) -> list[dict]:
        return []

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass
