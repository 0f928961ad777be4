"""A lean forward of a transformers ``LlamaForCausalLM``, read from the model's own weights.

    hidden = hidden_states(model, ids)          # [B, T, H], what model.model(ids) returns

transformers' forward is generic: a mask builder, a rotary module, an attention registry and
a module call per projection. For the organism (hidden 128) those layers of Python and the
fused CPU attention kernel's backward cost more than the arithmetic (bench/organism_build.py),
so pretraining runs this forward instead: the same parameters, read in place (gradients
land on the model's own tensors, the saved folder stays an ordinary ``LlamaForCausalLM``),
in plain tensor ops that ``torch.compile`` fuses. Per layer, for x [B, T, H]:

    h = rms(x) * w_in;      q, k, v = rope(h Wq), rope(h Wk), h Wv       # [B, heads, T, d]
    x = x + softmax(q k^T / sqrt(d) + causal) v Wo
    h = rms(x) * w_post;    x = x + (silu(h Wg) * (h Wu)) Wd

with rms(x) = x / sqrt(mean(x^2) + eps) in float32, rope the rotation of
(x_1, x_2) by position * theta^(-2i/d), and the final hidden rms(x) * w_norm: transformers'
formulas, checked against its forward in float64 (tests/test_organism_speed.py). The
attention scores are formed whole ([B, heads, T, T]): at the organism's lengths (<= 320)
that is cheaper than a flash kernel, and softmax is taken in float32 as transformers' eager
attention does.

Rows are causal from position 0 with no padding mask: right padding is never seen by a
real token, which is how ``sdlib.organism.pretrain`` batches.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def supports(model) -> bool:
    """Whether ``model`` is a plain Llama this forward reproduces exactly."""
    c = getattr(model, "config", None)
    if c is None or getattr(c, "model_type", None) != "llama":
        return False
    rope = getattr(c, "rope_parameters", None) or getattr(c, "rope_scaling", None) or {}
    return (
        not getattr(c, "attention_bias", False)
        and not getattr(c, "mlp_bias", False)
        and c.hidden_act == "silu"
        and rope.get("rope_type", "default") == "default"
        and getattr(c, "head_dim", None) in (None, c.hidden_size // c.num_attention_heads)
        and not getattr(c, "attention_dropout", 0.0)
    )


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def rotary(model, positions: torch.Tensor, dtype: torch.dtype):
    """(cos, sin) [..., d] of ``positions`` [...], computed in float32 as transformers does."""
    inv_freq = model.model.rotary_emb.inv_freq.float()
    freqs = positions.float()[..., None] * inv_freq
    angles = torch.cat((freqs, freqs), dim=-1)
    scale = model.model.rotary_emb.attention_scaling
    return (angles.cos() * scale).to(dtype), (angles.sin() * scale).to(dtype)


def hidden_states(model, ids: torch.Tensor) -> torch.Tensor:
    """The final (normed) hidden states [B, T, H] of ``model`` (a ``supports``-ed
    ``LlamaForCausalLM``; each projection is its module's call, so peft layers apply) on
    ``ids`` [B, T], causal from position 0."""
    return decoder(model, model.model.embed_tokens(ids))


def decoder(model, x: torch.Tensor) -> torch.Tensor:
    """``hidden_states`` from the token embeddings ``x`` [B, T, H] on."""
    c, inner = model.config, model.model
    heads, kv_heads = c.num_attention_heads, c.num_key_value_heads
    d = c.hidden_size // heads
    b, t, _ = x.shape
    # under autocast the projections come out in the autocast dtype; rope follows them
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled() else x.dtype
    at = torch.arange(t, device=x.device)
    cos, sin = rotary(model, at, dtype)  # [T, d]
    causal = torch.where(at[None, :] > at[:, None], float("-inf"), 0.0)  # [T, T]
    for layer in inner.layers:
        attn, mlp = layer.self_attn, layer.mlp
        h = _rms(x, layer.input_layernorm.weight, c.rms_norm_eps)
        q = attn.q_proj(h).view(b, t, heads, d).transpose(1, 2)  # [B, heads, T, d]
        k = attn.k_proj(h).view(b, t, kv_heads, d).transpose(1, 2)
        v = attn.v_proj(h).view(b, t, kv_heads, d).transpose(1, 2)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        if kv_heads != heads:  # head i reads kv head i // (heads / kv_heads)
            k = k.repeat_interleave(heads // kv_heads, dim=1)
            v = v.repeat_interleave(heads // kv_heads, dim=1)
        scores = torch.matmul(q, k.transpose(2, 3)) * attn.scaling + causal  # [B, heads, T, T]
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(b, t, heads * d)
        x = x + attn.o_proj(out)
        h = _rms(x, layer.post_attention_layernorm.weight, c.rms_norm_eps)
        x = x + mlp.down_proj(F.silu(mlp.gate_proj(h)) * mlp.up_proj(h))
    return _rms(x, inner.norm.weight, c.rms_norm_eps)


# --- decoding: the weights a model applies now, and a forward over a static KV cache ---

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def applied_weight(module) -> torch.Tensor | None:
    """The weight matrix ``module`` multiplies by now: a bias-free ``nn.Linear``'s own, or a
    peft LoRA ``Linear``'s base weight plus ``scale * B A`` of each active, unmerged
    adapter. None for anything else (DoRA and other variants, biases), which the caller
    then leaves to transformers' forward."""
    if type(module) is torch.nn.Linear:
        return module.weight if module.bias is None else None
    base = getattr(module, "base_layer", None)
    if type(base) is not torch.nn.Linear or base.bias is not None or not hasattr(module, "lora_A"):
        return None
    if module.disable_adapters:
        return None if module.merged else base.weight
    active = [a for a in module.active_adapters if a in module.lora_A]
    if any(a in getattr(module, "lora_variant", {}) for a in active):
        return None
    if module.merged or not active:
        return base.weight
    return base.weight + sum(module.get_delta_weight(a) for a in active)


class Snapshot:
    """A supported Llama's weights as applied now (LoRA deltas added in, projections
    concatenated: q|k|v and gate|up), for ``forward``. Taken once per generate call: the
    weights do not change while it decodes."""

    def __init__(self, model, layers: list[dict], embed, norm, head, inv_freq, scaling):
        self.config, self.layers = model.config, layers
        self.embed, self.norm, self.head = embed, norm, head
        self.inv_freq, self.scaling = inv_freq, scaling
        self.cos = self.sin = embed.new_empty(0, 2 * len(inv_freq))

    def rotary(self, positions: torch.Tensor):
        """(cos, sin) [B, 1, T, d] of ``positions`` [B, T], from a table grown as needed."""
        need = int(positions.max()) + 1
        if need > len(self.cos):
            at = torch.arange(max(need, 2 * len(self.cos)), device=positions.device)
            freqs = at.float()[:, None] * self.inv_freq[None]
            angles = torch.cat((freqs, freqs), dim=-1)  # [P, d]
            self.cos = (angles.cos() * self.scaling).to(self.embed.dtype)
            self.sin = (angles.sin() * self.scaling).to(self.embed.dtype)
        return self.cos[positions][:, None], self.sin[positions][:, None]

    @classmethod
    @torch.no_grad()
    def take(cls, model) -> Snapshot | None:
        """The snapshot of ``model`` (a Llama, or a peft model around one), or None when this
        forward would not reproduce it."""
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        if not supports(base) or type(base.model.embed_tokens) is not torch.nn.Embedding:
            return None
        weight = base.model.embed_tokens.weight
        if weight.dtype not in (torch.float32, torch.float64) or weight.device.type != "cpu":
            # bf16: a LoRA delta added in would mostly round away (peft applies it in float32
            # beside the weights); a GPU: transformers' path there is the one run on CUDA
            return None
        layers = []
        for layer in base.model.layers:
            a, m = layer.self_attn, layer.mlp
            w = {n: applied_weight(mod) for n, mod in [*a.named_children(), *m.named_children()]}
            if any(w.get(n) is None for n in PROJECTIONS):
                return None
            layers.append(
                {
                    "qkv": torch.cat([w["q_proj"], w["k_proj"], w["v_proj"]]),
                    "o": w["o_proj"],
                    "gate_up": torch.cat([w["gate_proj"], w["up_proj"]]),
                    "down": w["down_proj"],
                    "norm_in": layer.input_layernorm.weight,
                    "norm_post": layer.post_attention_layernorm.weight,
                }
            )
        head = applied_weight(base.lm_head)
        if head is None:
            return None
        rope = base.model.rotary_emb
        return cls(
            base, layers, base.model.embed_tokens.weight, base.model.norm.weight, head,
            rope.inv_freq.float(), rope.attention_scaling,
        )  # fmt: skip


class _Buffer:
    """A contiguous [B, heads, S, d] tensor that changes shape in place: two flat storages,
    the tensor a view of one, each change written into the other. Storage is reused, so
    growing or dropping rows neither zeroes nor page-faults fresh memory (a new 10 MB
    buffer costs ~4 ms to touch on this machine, more than a decode step's arithmetic)."""

    def __init__(self, like: torch.Tensor):
        self.flat = [like.new_empty(like.numel()), like.new_empty(0)]
        self.now = self.flat[0].view(like.shape).copy_(like)

    def _spare(self, shape) -> torch.Tensor:
        numel = math.prod(shape)
        if self.flat[1].numel() < numel:
            self.flat[1] = self.now.new_empty(max(numel, 2 * self.flat[1].numel()))
        return self.flat[1][:numel].view(shape)

    def _swap(self, new: torch.Tensor) -> None:
        self.flat.reverse()
        self.now = new

    def grow(self, columns: int) -> None:
        b, h, s, d = self.now.shape
        new = self._spare((b, h, columns, d))
        new[:, :, :s] = self.now
        new[:, :, s:] = 0  # attention reads them (masked): they must be finite
        self._swap(new)

    def select(self, rows: torch.Tensor) -> None:
        new = self._spare((len(rows), *self.now.shape[1:]))
        torch.index_select(self.now, 0, rows, out=new)
        self._swap(new)


class BlockCache:
    """Keys and values of every layer ([B, kv heads, S, d]), S grown ``BLOCK`` columns at a
    time and written in place. Attention reads all S columns (the unwritten ones are zeros,
    masked): a whole contiguous buffer multiplies ~3x faster than a slice of a longer one,
    which batched matmul copies first (2026-12-02: 0.8 against 2.4 ms for one layer's
    attention at 256 rows and 85 columns)."""

    BLOCK = 16

    def __init__(self, snap: Snapshot, rows: int, dtype, device):
        c = snap.config
        shape = (rows, c.num_key_value_heads, 0, c.hidden_size // c.num_attention_heads)
        empty = torch.zeros(shape, dtype=dtype, device=device)
        self.buffers = [_Buffer(empty) for _ in range(2 * len(snap.layers))]

    @property
    def k(self) -> list[torch.Tensor]:
        return [b.now for b in self.buffers[0::2]]

    @property
    def v(self) -> list[torch.Tensor]:
        return [b.now for b in self.buffers[1::2]]

    @property
    def width(self) -> int:
        return self.buffers[0].now.shape[2]

    @property
    def rows(self) -> int:
        return self.buffers[0].now.shape[0]

    def reserve(self, end: int) -> None:
        """Room for columns ``0 .. end - 1``."""
        if end > self.width:
            columns = -(-end // self.BLOCK) * self.BLOCK
            for b in self.buffers:
                b.grow(columns)

    def select(self, rows: torch.Tensor) -> None:
        for b in self.buffers:
            b.select(rows)


def _norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``_rms`` in one op where that is the same arithmetic (float32: bit for bit on this
    CPU, tests/test_llama.py); low precision rounds between the steps as transformers does."""
    if x.dtype in (torch.float32, torch.float64):
        return F.rms_norm(x, weight.shape, weight, eps)
    return _rms(x, weight, eps)


@torch.no_grad()
def forward(snap: Snapshot, cache: BlockCache, ids, positions, mask, at: int) -> torch.Tensor:
    """Logits [B, V] of the last of ``ids`` [B, T], whose keys and values are written to
    cache columns ``at .. at + T - 1``; ``positions`` [B, T] are their rotary positions and
    ``mask`` [B, T, at + T] (bool) says which cached columns each may attend to. The
    residual stream is kept flat ([B * T, H]): a decode step is a few dozen ops."""
    c, eps = snap.config, snap.config.rms_norm_eps
    heads, kv_heads = c.num_attention_heads, c.num_key_value_heads
    d, group = c.hidden_size // heads, heads // kv_heads
    b, t = ids.shape
    cache.reserve(at + t)
    end = cache.width
    mask = F.pad(mask, (0, end - mask.shape[-1]), value=False)  # unwritten columns: masked
    x = F.embedding(ids.reshape(-1), snap.embed)  # [B * T, H]
    cos, sin = snap.rotary(positions)  # [B, 1, T, d]
    bias = torch.where(mask, 0.0, float("-inf"))[:, None, None]  # [B, 1, 1, T, S]
    for w, keys, values in zip(snap.layers, cache.k, cache.v, strict=True):
        qkv = F.linear(_norm(x, w["norm_in"], eps), w["qkv"])
        qkv = qkv.view(b, t, heads + 2 * kv_heads, d).transpose(1, 2)
        qk = _rotate(qkv[:, : heads + kv_heads], cos, sin)  # [B, heads + kv, T, d]
        keys[:, :, at : at + t] = qk[:, heads:]
        values[:, :, at : at + t] = qkv[:, heads + kv_heads :]
        q = qk[:, :heads].reshape(b, kv_heads, group * t, d)  # head j * group + g: kv head j
        scores = torch.matmul(q, keys.transpose(2, 3)) * (d**-0.5)
        scores = scores.view(b, kv_heads, group, t, end) + bias  # [B, kv, g, T, S]
        if scores.dtype == torch.float32:
            probs = torch.softmax(scores, dim=-1)
        else:
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs.view(b, kv_heads, group * t, end), values)
        x = x + F.linear(out.view(b, heads, t, d).transpose(1, 2).reshape(b * t, -1), w["o"])
        gate, up = F.linear(_norm(x, w["norm_post"], eps), w["gate_up"]).chunk(2, dim=-1)
        x = x + F.linear(F.silu(gate) * up, w["down"])
    return F.linear(_norm(x.view(b, t, -1)[:, -1], snap.norm, eps), snap.head)
