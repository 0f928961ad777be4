"""Pieces every trainer shares: the policy to train, its data order, packed sequences, the
hidden states and output head the losses read, and the optimizer.

A step's batch is right-padded [B, T] (``Packed``); a micro-batch is taken from it padded
or packed into one row (``micro``). ``loss_mask`` marks positions whose *next* token is a
response token, so ``hidden[b, t]`` predicts ``target[b, t] = input_ids[b, t+1]``. The
losses work on the loss tokens only, flat [N]: ``selected`` gives their hidden states and
targets, ``at_tokens`` the step's per-position data there, ``token_sequences`` their
sequence, so the arithmetic is the same for both layouts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from dataclasses import dataclass

import torch

from sdlib import models
from sdlib.head import Head
from sdlib.losses import select_tokens
from sdlib.models import LoraSpec, keep_initial, load_policy
from sdlib.settings import fsdp_processes


def load_training_policy(cfg):
    """The policy to train: with a fresh LoRA adapter (its A factors drawn from
    ``cfg.seed``), or (``finetune: full``) every weight trainable, with a copy of the
    initial weights kept where a loss or a metric reads the initial policy."""
    torch.manual_seed(cfg.seed)
    lora = cfg.finetune == "lora"
    policy = load_policy(
        cfg.model,
        dtype=cfg.dtype,
        device=cfg.device,
        lora=LoraSpec(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout) if lora else None,
        load_in_4bit=cfg.load_in_4bit,
        gradient_checkpointing=cfg.gradient_checkpointing,
    )
    if not lora and reads_initial(cfg):
        keep_initial(policy.model)
    return policy


def reads_initial(cfg) -> bool:
    """Whether a run reads the initial policy: SDPO's initial or trust-region teacher, or KL
    to the start (its penalty or ``track_kl``); SFT never does."""
    sdpo_initial = cfg.algo == "sdpo" and cfg.teacher in ("initial", "trust-region")
    return cfg.algo != "sft" and (cfg.track_kl or cfg.kl_coef > 0 or sdpo_initial)


def resolve_finetune(cfg):
    """``cfg`` with ``finetune: auto`` replaced by what the device holds: ``full`` (every
    weight, as the reference) when ``models.full_finetune_bytes`` is at most half the device's
    memory (the other half for activations and, on a GPU, the vLLM engine), else ``lora``,
    said in one line. Resolved before a run is keyed, so the folder names what ran.

    Under an FSDP launch over P processes the gradients, masters and moments count 1/P
    (the weights whole: rollouts run on the gathered layers), and a run that reads the
    initial policy or an EMA teacher takes ``lora``: FSDP cannot swap in a copy of every
    weight (``dist.check_fsdp``)."""
    if cfg.finetune != "auto":
        return cfg
    copies = int(reads_initial(cfg)) + int(cfg.algo == "sdpo" and cfg.teacher == "ema")
    shards = fsdp_processes()
    need = models.full_finetune_bytes(
        models.parameter_count(cfg.model), models.resolve_dtype(cfg.dtype), copies, shards
    )
    have = models.device_memory(cfg.device)
    if shards > 1 and copies:
        choice, why = "lora", "FSDP cannot swap in the copy of every weight this run reads"
    else:
        choice = "full" if need <= have / 2 else "lora"
        why = (
            f"every weight of {cfg.model} needs about {need / 2**30:.1f} GiB"
            + (f" per process over {shards} (FSDP)" if shards > 1 else "")
            + f", {'within' if choice == 'full' else 'more than'} half of "
            f"{cfg.device}'s {have / 2**30:.1f} GiB"
        )
    print(f"[sdlib] finetune auto -> {choice}: {why}")
    return dataclasses.replace(cfg, finetune=choice)


def step_seed(seed: int, step: int) -> int:
    """The sampling seed of one step: a function of (seed, step) alone, so resumes agree."""
    digest = hashlib.sha256(f"{seed}:{step}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def step_items(items: list, step: int, size: int, seed: int) -> list:
    """The ``size`` items of ``step``: consecutive slices of per-epoch shuffles of ``items``
    (a pure function of its arguments, so a resumed run sees the same data)."""
    orders: dict[int, list[int]] = {}
    out = []
    for i in range(step * size, (step + 1) * size):
        epoch, pos = divmod(i, len(items))
        if epoch not in orders:
            orders[epoch] = list(range(len(items)))
            random.Random(seed * 100_003 + epoch).shuffle(orders[epoch])
        out.append(items[orders[epoch][pos]])
    return out


@dataclass
class Packed:
    """Prompt+response sequences as the model reads them: right-padded rows [B, T], or,
    with ``position_ids`` set, packed rows holding several sequences back to back
    (transformers then builds the block-causal mask from the restarting position ids).
    Either way ``tokens`` gives the loss tokens sequence by sequence, in the same order, so
    a student and a teacher batch of the same samples align one to one."""

    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    loss_mask: torch.Tensor  # [B, T] bool: position predicts a response token
    target: torch.Tensor  # [B, T] next token
    sequence: torch.Tensor  # [B, T] which of the batch's sequences a position belongs to
    position_ids: torch.Tensor | None = None  # [R, L]: packed rows, positions restarting
    order: torch.Tensor | None = None  # [N]: packed loss tokens -> the sequences' order

    def _map(self, fn) -> Packed:
        fields = (self.input_ids, self.attention_mask, self.loss_mask, self.target, self.sequence)
        pos = None if self.position_ids is None else fn(self.position_ids)
        order = None if self.order is None else fn(self.order)
        return Packed(*(fn(t) for t in fields), position_ids=pos, order=order)

    def to(self, device) -> Packed:
        return self._map(lambda t: t.to(device))

    def rows(self, idx) -> Packed:
        """The rows ``idx``, trimmed to their longest sequence (right padding)."""
        width = int(self.attention_mask[idx].sum(1).max())
        out = self._map(lambda t: t[idx, :width])
        out.sequence = torch.arange(len(out.input_ids))[:, None].expand(-1, width).clone()
        return out

    def packed_rows(self, idx) -> Packed:
        """The rows ``idx`` packed into as few rows as fit, none longer than the longest
        sequence (first-fit decreasing): no compute on padding, and attention stays
        row-sized (one row of everything would make it quadratic in the whole batch).
        Positions restart at 0 for every sequence, so transformers gives each its own
        causal block; ``order`` brings the loss tokens back into the order of ``idx``."""
        real = self.attention_mask[idx].bool()  # [n, T]
        lengths = real.sum(1).tolist()
        rows, room = [], []  # sequences of each packed row, and its free places
        for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
            fit = next((r for r, free in enumerate(room) if lengths[i] <= free), None)
            if fit is None:  # a new row
                fit = len(rows)
                rows.append([])
                room.append(max(lengths))
            rows[fit].append(i)
            room[fit] -= lengths[i]
        return self._pack_rows(idx, rows, lengths, max(lengths))

    def _pack_rows(self, idx, rows: list[list[int]], lengths: list[int], width: int) -> Packed:
        fields = (self.input_ids[idx], self.loss_mask[idx], self.target[idx])
        out = [torch.zeros((len(rows), width), dtype=t.dtype) for t in fields]
        sequence = torch.full((len(rows), width), -1, dtype=torch.long)
        position = torch.zeros((len(rows), width), dtype=torch.long)
        for r, members in enumerate(rows):
            at = 0
            for i in members:
                n = lengths[i]
                for src, dst in zip(fields, out, strict=True):
                    dst[r, at : at + n] = src[i, :n]
                sequence[r, at : at + n], position[r, at : at + n] = i, torch.arange(n)
                at += n
            position[r, at:] = torch.arange(width - at)  # the padding: a segment of its own
        ids, loss, target = out
        picked = select_tokens(sequence * width + position, loss)  # (sequence, place) keys
        return Packed(
            ids,
            torch.ones_like(ids),
            loss,
            target,
            sequence,
            position_ids=position,
            order=picked.argsort(),
        )


def pack(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> Packed:
    """Right-padded prompt+response rows with the response-predicting positions marked."""
    seqs = [p + r for p, r in zip(prompts, responses, strict=True)]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    loss = torch.zeros((len(seqs), width), dtype=torch.bool)
    for b, (p, s) in enumerate(zip(prompts, seqs, strict=True)):
        ids[b, : len(s)] = torch.tensor(s)
        attn[b, : len(s)] = 1
        loss[b, len(p) - 1 : len(s) - 1] = True
    target = torch.roll(ids, -1, dims=1)
    sequence = torch.arange(len(seqs))[:, None].expand(-1, width).clone()
    return Packed(ids, attn, loss, target, sequence)


def micro(batch: Packed, rows, cfg) -> Packed:
    """Micro-batch ``rows`` of a step's batch as the forward takes it: packed rows
    (``cfg.packing``: no compute on padding) or padded rows."""
    return batch.packed_rows(rows) if cfg.packing else batch.rows(rows)


def at_tokens(values: torch.Tensor, batch: Packed, rows) -> torch.Tensor:
    """A step-level per-position tensor [B, T] (pi_old, rollout weights) at the loss tokens of
    micro-batch ``rows``, in ``select_tokens`` order: [N]."""
    width = int(batch.attention_mask[rows].sum(1).max())
    return select_tokens(values[rows, :width], batch.loss_mask[rows, :width])


def unwrap(model):
    """The transformers CausalLM under a peft wrapper (LoRA layers stay in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def hidden_states(model, batch: Packed) -> torch.Tensor:
    """Final hidden states [B, T, H] of the decoder: the LM head is applied later, in chunks."""
    body = unwrap(model).get_decoder()
    if batch.position_ids is not None:  # packed rows: no attention mask, positions restart
        return body(
            input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False
        ).last_hidden_state
    position = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    return body(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=position,
        use_cache=False,
    ).last_hidden_state


def tokens(batch: Packed, values: torch.Tensor) -> torch.Tensor:
    """``values`` [B, T, ...] at the loss positions, sequence by sequence: [N, ...]."""
    picked = select_tokens(values, batch.loss_mask)
    return picked if batch.order is None else picked[batch.order]


def selected(model, batch: Packed) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states and targets at the loss positions: [N, H], [N]."""
    return tokens(batch, hidden_states(model, batch)), tokens(batch, batch.target)


def token_sequences(batch: Packed) -> torch.Tensor:
    """Which sequence of the micro-batch each loss token belongs to: [N]."""
    return tokens(batch, batch.sequence)


def output_head(model, cfg=None, temperature: float | None = None, head: Head | None = None):
    """The model's output layer as the losses apply it: ``loss_chunk`` tokens at a time, at
    the rollout temperature. The sampler records log softmax(logits / T) as pi_old, so pi
    must be tempered the same way for pi / pi_old to start at 1 (greedy, T = 0: untempered).
    ``head``: applied as that head, with the weights the model holds now (inside a view).
    """
    lm_head = unwrap(model).get_output_embeddings()
    weights = {"weight": lm_head.weight, "bias": getattr(lm_head, "bias", None)}
    if head is not None:
        return head._replace(**weights)
    t = cfg.temperature if temperature is None else temperature
    return Head(**weights, temperature=t if t > 0 else 1.0, chunk_size=cfg.loss_chunk)


class MasterAdamW(torch.optim.AdamW):
    """AdamW on float32 master copies of low-precision (bf16, fp16) weights.

    A bf16 weight cannot take a step much below 1/256 of itself, so at the reference's
    full fine-tuning rates (1e-6, 1e-5) most updates of a bf16 weight would round away.
    This optimizer keeps float32 masters and its moments in float32, reads the model's
    gradients as float32 and writes the updated masters back, rounded, into the model's
    weights: mixed precision as FSDP's."""

    def __init__(self, params, **kw):
        self.live = list(params)
        super().__init__([p.detach().float().requires_grad_() for p in self.live], **kw)

    @property
    def masters(self) -> list[torch.Tensor]:
        return self.param_groups[0]["params"]

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        for p in self.live:
            p.grad = None

    @torch.no_grad()
    def step(self, closure=None):
        for p, m in zip(self.live, self.masters, strict=True):
            # each gradient handed over and freed in turn: float32 ones exist only here
            m.grad, p.grad = (None if p.grad is None else p.grad.float()), None
        super().step()
        for p, m in zip(self.live, self.masters, strict=True):
            p.copy_(m)
            m.grad = None

    def load_masters(self, masters: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for m, value in zip(self.masters, masters, strict=True):
                m.copy_(value)


def learning_rate(cfg) -> float:
    """``cfg.lr``, times ``cfg.lora_lr_scale`` when training a LoRA adapter."""
    return cfg.lr * (cfg.lora_lr_scale if cfg.finetune == "lora" else 1.0)


def make_optimizer(model, cfg):
    """AdamW over the trainable weights (float32 masters for low-precision full
    fine-tuning: ``MasterAdamW``); linear warm-up, then constant."""
    params = [p for p in model.parameters() if p.requires_grad]
    low = cfg.finetune == "full" and any(p.element_size() < 4 for p in params)
    kind = MasterAdamW if low else torch.optim.AdamW
    opt = kind(params, lr=learning_rate(cfg), weight_decay=cfg.weight_decay)
    warm = max(cfg.warmup_steps, 0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda u: min(1.0, (u + 1) / (warm + 1)))
    return opt, sched


def micro_batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]
