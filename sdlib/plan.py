"""What a ``sdlib run`` costs before it starts: ``sdlib run ... --plan``.

Per notebook, from its validated parameters alone: rollouts (responses sampled, training
and evaluation), generated tokens, trained tokens, and GPU-hours from FLOPs:

    generation   2 P FLOPs per generated token, at GEN_UTILISATION of the device's peak
                 (decoding is memory-bound: a few percent of peak is typical)
    training     per trained token 2 P forward + 2 P backward (LoRA: the frozen base needs
                 activation gradients only), + 2 P each for SDPO's teacher, track_kl and
                 rollout_is: token; at TRAIN_UTILISATION of the peak

Token counts are upper bounds, every response at its ``max_new_tokens``, unless
``mean_response`` says how long responses run (R1-Distill's unguided answers average
~13k of 20,480). P comes from the model's config when it is on this machine, else from its
name ("7B"). Runs that two notebooks share are counted in each.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12}
GEN_UTILISATION = 0.05
TRAIN_UTILISATION = 0.35


@dataclass
class Cost:
    rollouts: float = 0  # responses sampled
    generated: float = 0  # tokens generated
    trained: float = 0  # response tokens forwarded and backpropagated
    passes: float = 0  # trained tokens x forward-equivalents (2P FLOPs each) per token

    def __add__(self, other: Cost) -> Cost:
        return Cost(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __mul__(self, k: float) -> Cost:
        return Cost(*(getattr(self, f.name) * k for f in fields(self)))

    def hours(self, params: float, peak: float) -> float:
        seconds = 2 * params * self.generated / (peak * GEN_UTILISATION)
        return (seconds + 2 * params * self.passes / (peak * TRAIN_UTILISATION)) / 3600


def sample(n: float, cap: int, mean: float | None) -> Cost:
    """``n`` responses of at most ``cap`` tokens (``mean`` long when given)."""
    return Cost(rollouts=n, generated=n * min(cap, mean or cap))


def training_run(t, mean: float | None) -> Cost:
    """One TrainConfig: its rollouts and its updates."""
    length = min(t.max_new_tokens, mean or t.max_new_tokens)
    if t.algo == "sft":
        trained = t.steps * t.prompts_per_step * length
        return Cost(trained=trained, passes=2 * trained)
    n = t.steps * t.prompts_per_step * t.rollouts_per_prompt
    # forward + backward, the teacher's forward (twice for trust-region, once more for the
    # teacher-entropy weights), the KL view, the trainer's pi_old
    teacher = (t.algo == "sdpo") * (
        (1 + (t.teacher == "trust-region")) + (t.teacher_entropy_weight > 0)
    )
    passes = 2 + teacher + t.track_kl + (t.rollout_is == "token")
    return sample(n, t.max_new_tokens, mean) + Cost(trained=n * length, passes=n * length * passes)


def runs_of(name: str, cfg) -> list:
    """The TrainConfigs (one seed's) a notebook trains."""
    from sdlib.experiments import training

    def one(algo, *more):
        extra = cfg.sdpo if algo == "sdpo" else getattr(cfg, "grpo", {})
        return training.config(cfg, algo, ["<data>"], cfg.train, extra, *more)

    if name.startswith("02"):
        return [training.config(cfg, "sft", ["<data>"], cfg.train)] * 2
    if name.startswith("03"):
        return [one("grpo"), one("sdpo")] + [one("sdpo")] * cfg.strip_variant
    if name.startswith("04"):
        return [one("sdpo")] * (1 + len(cfg.ema_rates))
    if name.startswith("05"):
        budget = cfg.budget_sizes if cfg.budget else []
        cut = {"max_new_tokens": cfg.budget}
        return [one(algo) for algo in cfg.algos for _ in cfg.sizes] + [
            one(algo, cut) for algo in cfg.algos for _ in budget
        ]
    if name.startswith("06"):  # the default organism and each variant
        return [one("grpo"), one("sdpo")] * (1 + len(cfg.variants))
    if name.startswith("07"):  # GRPO, SDPO, then each remedy (SDPO with its options)
        mixed = {**cfg.grpo, **cfg.sdpo}
        remedies = [training.config(cfg, "sdpo", ["<data>"], cfg.train, mixed, o)
                    for o in cfg.remedies.values()]  # fmt: skip
        return [one("grpo"), one("sdpo"), *remedies]
    return []


def notebook_cost(name: str, cfg, eval_problems: int, mean: float | None = None) -> Cost:
    """Everything one notebook samples and trains at its parameters."""
    seeds = len(cfg.seeds)
    if name.startswith("01"):
        screen = sample(cfg.pool_limit * cfg.select_k, cfg.max_new_tokens, mean)
        return screen + sample(cfg.max_problems * cfg.samples * 4 * seeds, cfg.max_new_tokens, mean)
    evals = eval_problems * cfg.eval_k
    total = sample(evals * seeds, cfg.max_new_tokens, mean)  # the base model
    for t in runs_of(name, cfg):
        every = cfg.eval_checkpoints and t.algo != "sft" and not name.startswith("06")
        every &= t.max_new_tokens == cfg.max_new_tokens  # 05's budget runs: their final only
        points = -(-t.steps // t.save_every) if every else 1
        total = (
            total
            + (training_run(t, mean) + sample(evals * points, cfg.max_new_tokens, mean)) * seeds
        )
    return total


def model_params(spec: str) -> float:
    """Parameters of ``spec``: from its config when on this machine, else from its name."""
    try:
        from sdlib.models import parameter_count

        return float(parameter_count(spec))
    except Exception:  # not on this machine, or no transformer config: read the name
        found = re.search(r"(\d+(?:\.\d+)?)\s*[Bb](?![a-z])", spec)
        if not found:
            raise ValueError(f"cannot tell how many parameters {spec!r} has") from None
        return float(found.group(1)) * 1e9


def device_peak() -> tuple[str, float]:
    """(name, bf16 dense peak FLOP/s) of this machine's GPU, or an H100's when none."""
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_FLOPS.items() if k in name), PEAK_FLOPS["A100"])
        return name, peak
    return "H100 (no GPU on this machine: stated peak)", PEAK_FLOPS["H100"]
