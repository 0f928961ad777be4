"""Pieces every trainer shares: packing sequences, the policy's hidden states, the optimizer,
the run folder (metrics, samples, checkpoints) and exact resumption.

A packed batch is right-padded [B, T]. ``loss_mask[b, t]`` marks positions whose *next*
token is a response token, so ``hidden[b, t]`` predicts ``target[b, t] = input_ids[b, t+1]``.
Student and teacher batches of the same samples select the same number of positions per
row, in the same order, so ``select_tokens`` aligns them one to one.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from sdlib import config as cfgmod
from sdlib.losses import select_tokens

CHECKPOINT_DIR = "checkpoints"


@dataclass
class Packed:
    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    loss_mask: torch.Tensor  # [B, T] bool: position predicts a response token
    target: torch.Tensor  # [B, T] next token

    def to(self, device) -> Packed:
        return Packed(
            *(
                t.to(device)
                for t in (self.input_ids, self.attention_mask, self.loss_mask, self.target)
            )
        )

    def rows(self, idx) -> Packed:
        """The rows ``idx``, trimmed to their longest sequence (right padding)."""
        width = int(self.attention_mask[idx].sum(1).max())
        return Packed(
            *(
                t[idx, :width]
                for t in (self.input_ids, self.attention_mask, self.loss_mask, self.target)
            )
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
    return Packed(ids, attn, loss, target)


def unwrap(model):
    """The transformers CausalLM under a peft wrapper (LoRA layers stay in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def hidden_states(model, batch: Packed) -> torch.Tensor:
    """Final hidden states [B, T, H] of the decoder: the LM head is applied later, in chunks."""
    body = unwrap(model).get_decoder()
    position = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    return body(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=position,
        use_cache=False,
    ).last_hidden_state


def head(model) -> tuple[torch.Tensor, torch.Tensor | None]:
    lm_head = unwrap(model).get_output_embeddings()
    return lm_head.weight, getattr(lm_head, "bias", None)


def head_options(cfg) -> dict:
    """How the losses apply the output head: ``loss_chunk`` tokens at a time, scoring at the
    rollout temperature. The sampler records log softmax(logits / T) as pi_old, so pi must
    be tempered the same way for pi / pi_old to start at 1 (greedy, T = 0: untempered)."""
    return {
        "temperature": cfg.temperature if cfg.temperature > 0 else 1.0,
        "chunk_size": cfg.loss_chunk,
    }


def selected(model, batch: Packed) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states and targets at the loss positions: [N, H], [N]."""
    h = hidden_states(model, batch)
    return select_tokens(h, batch.loss_mask), select_tokens(batch.target, batch.loss_mask)


def make_optimizer(model, cfg: cfgmod.TrainConfig):
    """AdamW over the trainable (LoRA) weights; linear warm-up, then constant."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(cfg.warmup_steps, 0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda u: min(1.0, (u + 1) / (warm + 1)))
    return opt, sched


def micro_batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class RunDir:
    """One run's folder: params.yaml, metrics.jsonl, samples.jsonl, checkpoints/step_N."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def save_params(self, cfg) -> None:
        saved = self.path / "params.yaml"
        if saved.exists():
            before = cfgmod.load(type(cfg), saved)
            changed = {k for k, v in vars(cfg).items() if getattr(before, k) != v}
            allowed = {"steps", "save_every", "sample_every", "out"}
            if changed - allowed:
                raise cfgmod.ConfigError(
                    f"{self.path} holds a run with other parameters ({sorted(changed - allowed)}); "
                    f"use a new out folder or the same parameters to resume"
                )
        cfgmod.save(cfg, saved)

    def append(self, name: str, rows: list[dict]) -> None:
        with (self.path / name).open("a") as f:
            f.writelines(json.dumps(r, default=float) + "\n" for r in rows)

    def read(self, name: str) -> list[dict]:
        path = self.path / name
        if not path.exists():
            return []
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]

    def truncate(self, name: str, step: int) -> None:
        """Drop rows written after checkpoint ``step`` (they will be recomputed)."""
        rows = [r for r in self.read(name) if r.get("step", 0) <= step]
        (self.path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    def latest(self) -> Path | None:
        found = sorted(
            (self.path / CHECKPOINT_DIR).glob("step_*"),
            key=lambda p: int(p.name.removeprefix("step_")),
        )
        done = [p for p in found if (p / "state.pt").exists()]
        return done[-1] if done else None


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(run: RunDir, step: int, model, opt, sched, extra: dict) -> Path:
    """Adapter (peft format, for eval and vLLM) plus everything exact resumption needs."""
    folder = run.path / CHECKPOINT_DIR / f"step_{step}"
    folder.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(folder / "adapter")
    state = {
        "step": step,
        "trainable": trainable_state(model),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": {
            "python": random.getstate(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
        **extra,
    }
    torch.save(state, folder / "state.pt.tmp")
    (folder / "state.pt.tmp").replace(folder / "state.pt")  # complete or absent
    return folder


def load_checkpoint(folder: Path, model, opt, sched) -> dict:
    state = torch.load(folder / "state.pt", weights_only=False)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["trainable"].items():
            params[name].copy_(value)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    random.setstate(state["rng"]["python"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state
