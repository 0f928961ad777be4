"""Generation behind one interface: ``backend.generate(prompts, n, sampling) -> Rollouts``.

Two backends:
    TransformersBackend   any device; a KV-cached decode loop over left-padded batches that
                          drops finished rows, so a batch costs what its live rows need
    VLLMBackend           GPU only, imported lazily; LoRA adapters through LoRA requests

Log-probs are those of the distribution the token was drawn from before top-p/top-k
truncation: ``log softmax(logits / temperature)[token]``, the ``pi_old`` of the importance
ratio; the losses score tokens at the same temperature (``sdlib.head.Head``), so the ratio
starts at 1 whatever the rollout temperature (the paper's 1.0, the tiny preset's 0.7).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import LlamaForCausalLM
from transformers.cache_utils import DynamicLayer

from sdlib import llama
from sdlib.progress import tqdm

# transformers renamed ``past_key_values`` to ``cache`` during 5.x; speak whichever it knows.
_CACHE_KW = (
    "cache"
    if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters
    else ("past_key_values")
)


# Below this hidden size a decode step's matrix products are too small to split across
# threads: with OMP_WAIT_POLICY=PASSIVE (sdlib's default) each op wakes the sleeping pool,
# and one thread decodes the organism (hidden 128) 1.5-1.8x faster than two
# (bench/decode.py); spinning threads (ACTIVE) do not pay that cost.
SMALL_HIDDEN = 256
# how a row's tokens are drawn from its seed; evaluations record it, so samples drawn
# by an older scheme are not resumed as if current (a plain Llama's logits now come from
# sdlib.llama's forward, which rounds differently from transformers')
SAMPLER = "inverse-cdf, 64 uniforms per call; sdlib.llama decode"
# finished rows leave a batch once they are this fraction (1/COMPACT_EVERY) of it
COMPACT_EVERY = 8


def decode_threads(model) -> int:
    """Intra-op threads for decoding ``model``: 1 for a small model on CPU with passive
    OpenMP threads, else torch's count."""
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    on_cpu = next(model.parameters()).device.type == "cpu"
    passive = os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"
    if on_cpu and passive and hidden is not None and hidden <= SMALL_HIDDEN:
        return 1
    return torch.get_num_threads()


@contextlib.contextmanager
def threads(n: int):
    """torch's intra-op thread count set to ``n`` for the block, then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class Sampling:
    """How to sample. ``temperature == 0`` means greedy; ``top_k == 0`` means no top-k."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive int, got {self.max_new_tokens!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k!r}")


@dataclass
class Rollouts:
    """``n`` samples for each prompt, sample ``i`` answering ``prompts[prompt_index[i]]``,
    in prompt order (all samples of prompt 0 first)."""

    prompt_index: list[int] = field(default_factory=list)
    prompt_ids: list[list[int]] = field(default_factory=list)
    token_ids: list[list[int]] = field(default_factory=list)
    logprobs: list[list[float]] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    finish_reason: list[str] = field(default_factory=list)  # "stop" (EOS) or "length"
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(t) for t in self.token_ids]


def row_seed(seed: int, key: int, sample: int) -> int:
    """The seed of one sequence: a function of (seed, prompt key, sample number) only."""
    digest = hashlib.sha256(f"{seed}/{key}/{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def sample_next(logits: torch.Tensor, s: Sampling, uniform: torch.Tensor | None = None):
    """Draw one token per row. Returns (token [B], log-prob [B]) from ``logits`` [B, V].

    With ``uniform`` [B], one U(0, 1) number per row from that row's own generator (see
    ``RowUniform``), row b takes the token where the cumulative distribution (float64, in
    vocabulary order) first exceeds u_b: inverse-CDF sampling, the same distribution as
    multinomial sampling, but a sequence's tokens no longer depend on which other
    sequences share its batch, its position there, or the process it runs in.
    """
    logits = logits.float()
    if s.temperature == 0:
        logp = torch.log_softmax(logits, dim=-1)
        token = logits.argmax(dim=-1)
        return token, logp.gather(1, token[:, None]).squeeze(1)
    logp = torch.log_softmax(logits / s.temperature if s.temperature != 1 else logits, dim=-1)
    filtered = logp
    if s.top_k:
        kth = logp.topk(min(s.top_k, logp.shape[-1]), dim=-1).values[:, -1:]
        filtered = filtered.masked_fill(logp < kth, float("-inf"))
    if s.top_p < 1:
        sorted_lp, order = filtered.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p: drop a token once the mass
        # before it already covers top_p
        before = sorted_lp.exp().cumsum(-1) - sorted_lp.exp()
        drop = torch.zeros_like(filtered, dtype=torch.bool).scatter(1, order, before >= s.top_p)
        filtered = filtered.masked_fill(drop, float("-inf"))
    if uniform is None:
        token = torch.multinomial(torch.softmax(filtered, dim=-1), 1).squeeze(1)
    else:
        cdf = filtered.double().exp().cumsum(dim=-1)
        # a token of probability 0 never has the first cdf value above u: right=True
        at = (uniform.double() * cdf[:, -1]).unsqueeze(1)
        token = torch.searchsorted(cdf, at, right=True).squeeze(1).clamp(max=cdf.shape[1] - 1)
    return token, logp.gather(1, token[:, None]).squeeze(1)


class RowUniform:
    """One U(0, 1) number per row and step, from the row's own generator, drawn ``BLOCK``
    steps at a time (one call per row every ``BLOCK`` steps, not every step)."""

    BLOCK = 64

    def __init__(self, gens: list[torch.Generator], device):
        self.gens, self.device = gens, device
        self.step, self.buffer = 0, None

    def next(self) -> torch.Tensor:
        """[B]: this step's number of every row."""
        at = self.step % self.BLOCK
        if at == 0:
            self.buffer = torch.stack(
                [torch.rand(self.BLOCK, generator=g, device=self.device) for g in self.gens]
            )  # [B, BLOCK]
        self.step += 1
        return self.buffer[:, at]

    def keep(self, rows: torch.Tensor) -> None:
        """Only ``rows`` stay in the batch."""
        self.gens = [self.gens[i] for i in rows.tolist()]
        self.buffer = self.buffer[rows]


class GrowingLayer(DynamicLayer):
    """A layer's keys and values in a buffer with spare room, doubled when full: appending
    a token writes it in place, where ``DynamicLayer`` copies the whole cache for every
    token (1.31x slower at 200 rows of the organism, measured 2026-12-01)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.used, self.device, self.is_initialized = keys.shape[-2], keys.device, True
        self.store_k, self.store_v = self._room(keys), self._room(values)
        self._views()

    def _room(self, states: torch.Tensor) -> torch.Tensor:
        """A buffer twice as long as ``states`` (at least 64 more), ``states`` at its start."""
        b, h, n, d = states.shape
        store = states.new_empty(b, h, max(2 * n, n + 64), d)
        store[:, :, :n] = states
        return store

    def _views(self) -> None:
        self.keys = self.store_k[:, :, : self.used]
        self.values = self.store_v[:, :, : self.used]

    def update(self, key_states, value_states, *args, **kwargs):
        end = self.used + key_states.shape[-2]
        if end > self.store_k.shape[-2]:
            self.store_k, self.store_v = self._room(self.keys), self._room(self.values)
        self.store_k[:, :, self.used : end] = key_states
        self.store_v[:, :, self.used : end] = value_states
        self.used = end
        self._views()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.store_k, self.store_v = self.store_k[indices], self.store_v[indices]
        self._views()


def grow_in_place(cache) -> None:
    """Make each plain (full-attention) layer of a filled ``cache`` a ``GrowingLayer``;
    other kinds (sliding windows) keep their own update."""
    cache.layers = [
        GrowingLayer(layer.keys, layer.values) if type(layer) is DynamicLayer else layer
        for layer in cache.layers
    ]


class TransformersBackend:
    """Batched decoding with the model's KV cache, on whatever device the model sits.

    ``batch_size`` rows are decoded together; prompts are sorted by length first so that a
    batch holds prompts of similar length and little padding. Decoding runs with
    ``n_threads`` intra-op threads (default ``decode_threads(model)``: a fixed function of
    the model and its device, so a resumed run decodes as the original did).
    """

    def __init__(
        self, model, tokenizer, batch_size: int = 32, progress: bool = True, n_threads=None
    ):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size = batch_size
        self.progress = progress
        self.n_threads = n_threads or decode_threads(model)
        eos = model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        self.stop_ids = sorted({*eos, tokenizer.eos_token_id} - {None})

    def encode(self, prompts: list[str]) -> list[list[int]]:
        # Chat-templated text already holds its special tokens.
        return [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        n: int = 1,
        sampling: Sampling = Sampling(),
        keys: list[int] | None = None,
    ) -> Rollouts:
        """``n`` samples per prompt. Sample j of prompt i is seeded by (sampling.seed,
        keys[i], j) alone (keys default to 0, 1, ...): pass stable keys, such as a problem's
        position in the step, to get the same samples however the prompts are batched or
        split across processes."""
        start = time.perf_counter()
        encoded = self.encode(prompts)
        keys = list(range(len(prompts))) if keys is None else keys
        rows = [(i, ids) for i, ids in enumerate(encoded) for _ in range(n)]
        seeds = [row_seed(sampling.seed, keys[i], j) for i in range(len(prompts)) for j in range(n)]
        order = sorted(range(len(rows)), key=lambda r: (len(rows[r][1]), r))
        results: dict[int, tuple[list[int], list[float], str]] = {}
        bar = tqdm(total=len(rows), desc="generate", unit="seq", disable=not self.progress)
        was_training = self.model.training
        self.model.eval()
        # the weights as applied now (LoRA added in), when sdlib.llama reproduces the model
        self.side = LeanSide(snap) if (snap := llama.Snapshot.take(self.model)) else None
        try:
            with threads(self.n_threads):
                for lo in range(0, len(order), self.batch_size):
                    chunk = order[lo : lo + self.batch_size]
                    gens = [torch.Generator(self.model.device).manual_seed(seeds[r]) for r in chunk]
                    outs = self._decode([rows[r][1] for r in chunk], sampling, gens)
                    results.update(zip(chunk, outs, strict=True))
                    bar.update(len(chunk))
        finally:
            bar.close()
            self.side = None
            self.model.train(was_training)
        out = Rollouts(seconds=time.perf_counter() - start)
        for r, (pi, ids) in enumerate(rows):
            toks, lps, reason = results[r]
            out.prompt_index.append(pi)
            out.prompt_ids.append(ids)
            out.token_ids.append(toks)
            out.logprobs.append(lps)
            out.finish_reason.append(reason)
        out.text = self.tokenizer.batch_decode(out.token_ids, skip_special_tokens=True)
        return out

    def _decode(self, prompt_ids: list[list[int]], s: Sampling, gens):
        """Decode one left-padded batch.

        Copies of one prompt (the n samples of a group) are prefilled once and their KV
        cache repeated, so a group costs one prefill, not n. Finished rows ride along until
        an eighth of the batch has finished, then leave it and its cache together: fewer
        cache copies than dropping each row as it finishes, little work on finished rows.
        Tokens and log-probs are written into [rows, max_new_tokens] tables, not Python
        lists, so a step's bookkeeping is a few tensor ops whatever the batch.
        """
        device = self.model.device
        unique = list(dict.fromkeys(map(tuple, prompt_ids)))
        copy_of = torch.tensor([unique.index(tuple(p)) for p in prompt_ids], device=device)
        width = max(map(len, unique))
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in unique], device=device)
        lengths = torch.tensor([len(p) for p in unique], device=device)
        prompt_mask = torch.arange(width, device=device) >= (width - lengths)[:, None]
        side = self.side or HFSide(self.model)
        logits = side.prefill(ids, prompt_mask, copy_of)
        # the attention mask of every position to come: the prompt's, then the new tokens'
        mask = prompt_mask[copy_of]
        mask = torch.cat([mask, mask.new_ones(len(mask), s.max_new_tokens)], dim=1)
        position = lengths[copy_of][:, None]
        uniform = None if s.temperature == 0 else RowUniform(gens, device)
        stop = torch.tensor(self.stop_ids, device=device)
        rows = len(prompt_ids)
        row = torch.arange(rows, device=device)  # batch row -> original row
        alive = torch.ones(rows, dtype=torch.bool, device=device)
        tokens = torch.zeros(rows, s.max_new_tokens, dtype=torch.long, device=device)
        logps = torch.zeros(rows, s.max_new_tokens, dtype=torch.float32, device=device)
        count = torch.full((rows,), s.max_new_tokens, dtype=torch.long, device=device)
        ended = torch.zeros(rows, dtype=torch.bool, device=device)  # by a stop token
        for step in range(s.max_new_tokens):
            token, logp = sample_next(logits, s, None if uniform is None else uniform.next())
            live = row[alive]
            tokens[live, step], logps[live, step] = token[alive], logp[alive]
            stopped = alive & torch.isin(token, stop)
            count[row[stopped]], ended[row[stopped]] = step + 1, True
            alive &= ~stopped
            left = int(alive.sum())
            if left == 0 or step == s.max_new_tokens - 1:
                break
            if len(row) - left >= max(1, len(row) // COMPACT_EVERY):
                keep = alive.nonzero().squeeze(1)
                side.select(keep)
                row, token, mask, position, alive = (
                    t[keep] for t in (row, token, mask, position, alive)
                )
                if uniform is not None:
                    uniform.keep(keep)
            logits = side.step(token, mask[:, : width + step + 1], position, width + step)
            position = position + 1
        return [
            (tokens[r, :n].tolist(), logps[r, :n].tolist(), "stop" if end else "length")
            for r, (n, end) in enumerate(zip(count.tolist(), ended.tolist(), strict=True))
        ]


class HFSide:
    """The model side of the decode loop for any model: transformers' forward and cache
    (``GrowingLayer`` for plain attention layers)."""

    def __init__(self, model):
        self.model = model

    def prefill(self, ids, prompt_mask, copy_of):
        mask = prompt_mask.long()
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            use_cache=True,
            logits_to_keep=1,
        )
        self.cache = getattr(out, _CACHE_KW)
        self.cache.batch_select_indices(copy_of)  # [U, ...] -> [B, ...]
        grow_in_place(self.cache)
        return out.logits[copy_of, -1]

    def step(self, token, mask, position, at):
        out = self.model(
            input_ids=token[:, None],
            attention_mask=mask.long(),
            position_ids=position,
            use_cache=True,
            **{_CACHE_KW: self.cache},
        )
        return out.logits[:, -1]

    def select(self, rows):
        self.cache.batch_select_indices(rows)


class LeanSide:
    """The model side of the decode loop for a plain Llama (with or without LoRA):
    ``sdlib.llama.forward`` on a snapshot of the weights over a block cache, a few dozen
    tensor ops per token where transformers' forward runs hundreds
    (bench/decode.py)."""

    def __init__(self, snap: llama.Snapshot):
        self.snap = snap

    def prefill(self, ids, prompt_mask, copy_of):
        u, width = ids.shape
        cache = llama.BlockCache(self.snap, u, self.snap.embed.dtype, ids.device)
        positions = (prompt_mask.long().cumsum(-1) - 1).clamp(min=0)
        causal = torch.ones(width, width, dtype=torch.bool, device=ids.device).tril()
        # a padding position sees itself, so its (never read) state stays finite
        mask = (causal & prompt_mask[:, None, :]) | torch.eye(
            width, dtype=torch.bool, device=ids.device
        )
        logits = llama.forward(self.snap, cache, ids, positions, mask, 0)
        cache.select(copy_of)  # [U, ...] -> [B, ...]
        self.cache = cache
        return logits[copy_of]

    def step(self, token, mask, position, at):
        return llama.forward(self.snap, self.cache, token[:, None], position, mask[:, None], at)

    def select(self, rows):
        self.cache.select(rows)


class VLLMWeightLoader:
    """A vLLM worker extension (``worker_extension_cls``): ``sdlib_load_weights(folder)``
    reads the safetensors files a trainer wrote (no pickle) into the engine's model, so a
    fully fine-tuned policy is served without restarting the engine."""

    def sdlib_load_weights(self, folder: str) -> None:
        from safetensors.torch import load_file

        for file in sorted(Path(folder).glob("*.safetensors")):
            self.model_runner.model.load_weights(weights=load_file(file).items())


class VLLMBackend:
    """vLLM on GPU. ``engine`` is a ``vllm.LLM``; pass one in (tests use a fake) or let
    ``from_model`` build it. LoRA adapters are served through ``LoRARequest``s; fully
    fine-tuned weights are loaded into the engine (``load_weights``)."""

    def __init__(self, engine, tokenizer, lora_path: str | None = None, lora_id: int = 1):
        self.engine, self.tokenizer = engine, tokenizer
        self.lora_path, self.lora_id = lora_path, lora_id

    @classmethod
    def from_model(
        cls,
        model_path: str,
        tokenizer,
        *,
        dtype: str = "bfloat16",
        tensor_parallel_size: int = 1,
        max_lora_rank: int = 64,
        gpu_memory_utilization: float = 0.5,
        max_model_len: int | None = None,
        tokenizer_path: str | None = None,
        lora: bool = True,
    ):
        try:
            import vllm
        except ImportError as err:
            raise RuntimeError(
                "the vllm backend needs a GPU machine and pip install "
                "'sdlib[gpu]'; use backend 'transformers' on CPU"
            ) from err
        engine = vllm.LLM(
            model=model_path,
            tokenizer=tokenizer_path,
            dtype=dtype,
            enable_lora=lora,
            max_lora_rank=max_lora_rank,
            worker_extension_cls=f"{__name__}.VLLMWeightLoader",
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enable_prefix_caching=True,
            # log-probs of the distribution sampled from (after temperature), as the
            # transformers backend records them; vLLM's default is before temperature,
            # which would start pi / pi_old away from 1 at any T != 1
            logprobs_mode="processed_logprobs",
        )
        return cls(engine, tokenizer)

    def set_adapter(self, path: str | Path) -> None:
        """Serve the LoRA adapter saved at ``path`` from now on. vLLM caches adapters by
        id, so each new version gets a new id (the trainer calls this every step)."""
        self.lora_path, self.lora_id = str(path), self.lora_id + 1

    def load_weights(self, folder: str | Path) -> None:
        """Serve the whole model saved at ``folder`` (safetensors) from now on; the prefix
        cache is dropped, since its keys and values came from the old weights."""
        self.engine.collective_rpc("sdlib_load_weights", args=(str(folder),))
        self.engine.reset_prefix_cache()

    def sampling_params(self, n: int, s: Sampling, seed: int):
        from vllm import SamplingParams

        return SamplingParams(
            n=n,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k or -1,
            max_tokens=s.max_new_tokens,
            seed=seed,
            logprobs=0,
        )

    def lora_request(self):
        if self.lora_path is None:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(f"sdlib-{self.lora_id}", self.lora_id, self.lora_path)

    def generate(
        self,
        prompts: list[str],
        n: int = 1,
        sampling: Sampling = Sampling(),
        keys: list[int] | None = None,
    ) -> Rollouts:
        """As TransformersBackend.generate; each prompt's request is seeded by its key."""
        start = time.perf_counter()
        keys = list(range(len(prompts))) if keys is None else keys
        # vLLM refuses n > 1 greedy samples: ask for one and repeat it (they are all equal)
        repeat = n if sampling.temperature == 0 else 1
        params = [
            self.sampling_params(n // repeat, sampling, row_seed(sampling.seed, k, 0)) for k in keys
        ]
        requests = [
            {"prompt_token_ids": ids}
            for ids in (self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts)
        ]
        outputs = self.engine.generate(
            requests,
            params,
            lora_request=self.lora_request(),
            use_tqdm=True,
        )
        return self.to_rollouts(outputs, time.perf_counter() - start, repeat)

    @staticmethod
    def to_rollouts(outputs, seconds: float, repeat: int = 1) -> Rollouts:
        """vLLM ``RequestOutput``s -> Rollouts (``logprobs=0`` gives the sampled token's),
        each completion ``repeat`` times. A request vLLM aborted or failed is an error, not
        a response cut at max_new_tokens."""
        out = Rollouts(seconds=seconds)
        for i, request in enumerate(outputs):
            for c in request.outputs:
                if c.finish_reason not in ("stop", "length"):
                    raise RuntimeError(
                        f"vLLM ended a request with finish_reason {c.finish_reason!r} (not stop "
                        f"or length): its engine log says why; nothing of this batch is kept"
                    )
                ids = list(c.token_ids)
                logprobs = [step[t].logprob for step, t in zip(c.logprobs, ids, strict=True)]
                for _ in range(repeat):
                    out.prompt_index.append(i)
                    out.prompt_ids.append(list(request.prompt_token_ids))
                    out.token_ids.append(ids)
                    out.logprobs.append(logprobs)
                    out.text.append(c.text)
                    out.finish_reason.append(c.finish_reason)
        return out


# The registry ``backend`` settings choose from.
BACKENDS = {"transformers": TransformersBackend, "vllm": VLLMBackend}
