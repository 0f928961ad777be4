"""Evaluations of an experiment: the base policy or trained weights (a LoRA adapter or a
fully fine-tuned model), sampled in its own
content-addressed folder under ``<out>/eval``, with the model loaded only when needed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from sdlib.evaluate import EvalResult, evaluate
from sdlib.experiments import cache
from sdlib.models import is_full_weights, load_policy, load_tokenizer, local_folder, model_limits
from sdlib.problems import Problem
from sdlib.prompts import THINKING, student_turn
from sdlib.rollout import SAMPLER, Sampling, TransformersBackend, VLLMBackend


class LazyBackend:
    """Loads the policy on the first ``generate``: a finished evaluation loads nothing."""

    def __init__(self, cfg, adapter: str | None):
        self.cfg, self.adapter, self.inner = cfg, adapter, None

    def _load(self):
        cfg = self.cfg
        full = bool(self.adapter) and is_full_weights(self.adapter)
        if cfg.backend == "vllm":
            base = local_folder(cfg.model)
            inner = VLLMBackend.from_model(
                self.adapter if full else base, load_tokenizer(cfg.model), tokenizer_path=base
            )
            if self.adapter and not full:
                inner.set_adapter(self.adapter)
            return inner
        policy = load_policy(cfg.model, dtype=cfg.dtype, device=cfg.device, adapter=self.adapter)
        # an evaluation never trains: fold the adapter into the weights, W + (alpha/r) B A,
        # so a decode step runs one matrix product per layer, not three
        model = policy.model.merge_and_unload() if self.adapter and not full else policy.model
        # evaluate() shows the progress bar; one per batch here would only add noise
        return TransformersBackend(model, policy.tokenizer, cfg.gen_batch, progress=False)

    def generate(self, prompts, n, sampling, keys=None):
        if self.inner is None:
            self.inner = self._load()
        return self.inner.generate(prompts, n, sampling, keys=keys)


def eval_sampling(cfg, seed: int) -> Sampling:
    """The experiment's evaluation sampling (the paper's: T 0.6, top-p 0.95)."""
    return Sampling(cfg.max_new_tokens, cfg.eval_temperature, cfg.eval_top_p, seed=seed)


def evaluate_policy(
    cfg,
    label: str,
    benchmarks: dict[str, list[Problem]],
    *,
    adapter: str | Path | None = None,
    k: int | None = None,
    sampling: Sampling | None = None,
    prompt_fn=None,
    seed: int = 0,
    prefill: str = "",
) -> EvalResult:
    """Evaluate (or resume, or find finished) the base policy or ``adapter`` (trained
    weights: a LoRA adapter or a whole model); the folder is keyed by their bytes, not
    their path, so a moved run folder finds its work."""
    k = k or cfg.eval_k
    sampling = sampling or eval_sampling(cfg, seed)
    prompt_fn = prompt_fn or student_turn
    identity = {
        "model": cfg.model,
        "dtype": cfg.dtype,
        "sampler": "vllm" if cfg.backend == "vllm" else SAMPLER,
        "adapter": cache.file_digest(Path(adapter)) if adapter else None,
        "k": k,
        "sampling": dataclasses.asdict(sampling),
        "thinking": cfg.thinking,
        "few_shot": cfg.few_shot,
        "prefill": prefill,
        "problems": {n: [(p.id, prompt_fn(p)) for p in ps] for n, ps in benchmarks.items()},
    }
    return evaluate(
        LazyBackend(cfg, str(adapter) if adapter else None),
        load_tokenizer(cfg.model),
        benchmarks,
        k=k,
        sampling=sampling,
        out_dir=cache.folder(cfg.out, "eval", label, identity),
        prompt_fn=prompt_fn,
        thinking=THINKING[cfg.thinking],
        few_shot=cfg.few_shot,
        context=model_limits(cfg.model)[1],
        prefill=prefill,
        rules=cfg.grader,
        # as many problems per generate call as fill a decode batch with their k samples
        problems_per_batch=max(1, cfg.gen_batch // k),
    )


def evaluate_seeds(
    cfg, label: str, benchmarks: dict[str, list[Problem]], adapters=None, **kw
) -> pd.DataFrame:
    """``evaluate_policy`` once per seed of the experiment, the base policy or
    ``adapters[i]`` (seed i's trained adapter); all samples, with a ``seed`` column."""
    frames = []
    for i, seed in enumerate(cfg.seeds):
        adapter = None if adapters is None else adapters[i]
        result = evaluate_policy(cfg, label, benchmarks, adapter=adapter, seed=seed, **kw)
        frames.append(result.samples.assign(seed=seed))
    return pd.concat(frames, ignore_index=True)


def checkpoint_evals(cfg, label: str, trained: list, benchmarks, base: pd.DataFrame) -> dict:
    """{(label, step): samples} for every checkpoint of every seed's run, step 0 being the
    base model, when ``cfg.eval_checkpoints`` (curves over training); else the final only."""
    steps: dict[int, list[pd.DataFrame]] = {0: [base]}
    for seed, run in zip(cfg.seeds, trained, strict=True):
        points = run.checkpoints if cfg.eval_checkpoints else run.checkpoints[-1:]
        for step, adapter in points:
            result = evaluate_policy(
                cfg, f"{label}-step{step}", benchmarks, adapter=adapter, seed=seed
            )
            steps.setdefault(step, []).append(result.samples.assign(seed=seed))
    return {(label, step): pd.concat(frames, ignore_index=True) for step, frames in steps.items()}
