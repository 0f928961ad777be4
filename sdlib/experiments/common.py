"""What every experiment shares: problem sets, content-addressed training and evaluation
runs inside one run folder, and a Results object holding the tables and figures.

Runs are keyed by a hash of everything that determines them, so two notebooks asking for
the same run (notebook 03's SDPO run is notebook 04's fixed-teacher run) compute it once,
and a rerun finds it finished or resumes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pandas as pd

from sdlib import config as cfgmod
from sdlib.evaluate import EvalResult, evaluate
from sdlib.models import load_policy, load_tokenizer, local_folder
from sdlib.problems import Problem, load_problems
from sdlib.prompts import THINKING, student_prompt
from sdlib.rollout import Sampling, TransformersBackend, VLLMBackend


def load_benchmarks(specs: list[str], limit: int = 0) -> dict[str, list[Problem]]:
    """Problem sets by name; malformed rows were reported by the loader and are left out."""
    sets = {}
    for spec in specs:
        loaded = load_problems(spec)
        problems = list(loaded)
        sets[loaded.name] = problems[:limit] if limit else problems
    return sets


def pooled(specs: list[str], limit: int = 0) -> list[Problem]:
    return [p for ps in load_benchmarks(specs, limit).values() for p in ps]


def digest(value) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


class LazyBackend:
    """Loads the policy on the first ``generate``: a finished evaluation loads nothing."""

    def __init__(self, cfg, adapter: str | None):
        self.cfg, self.adapter, self.inner = cfg, adapter, None

    def generate(self, prompts, n, sampling):
        if self.inner is None and self.cfg.backend == "vllm":
            self.inner = VLLMBackend.from_model(
                local_folder(self.cfg.model), load_tokenizer(self.cfg.model)
            )
            if self.adapter:
                self.inner.set_adapter(self.adapter)
        if self.inner is None:
            policy = load_policy(
                self.cfg.model, dtype=self.cfg.dtype, device=self.cfg.device, adapter=self.adapter
            )
            # evaluate() shows the progress bar; one per batch here would only add noise
            self.inner = TransformersBackend(
                policy.model, policy.tokenizer, self.cfg.gen_batch, progress=False
            )
        return self.inner.generate(prompts, n, sampling)


def eval_sampling(cfg) -> Sampling:
    return Sampling(cfg.max_new_tokens, cfg.eval_temperature, cfg.eval_top_p, seed=cfg.seed)


def run_evaluation(
    cfg,
    label: str,
    benchmarks: dict[str, list[Problem]],
    *,
    adapter: str | Path | None = None,
    k: int | None = None,
    sampling: Sampling | None = None,
    prompt_fn=None,
) -> EvalResult:
    """Evaluate (or resume evaluating) the base policy or ``adapter`` in the run folder."""
    k = k or cfg.eval_k
    sampling = sampling or eval_sampling(cfg)
    prompt_fn = prompt_fn or (lambda p: student_prompt(p.question))
    key = digest(
        {
            "model": cfg.model,
            "dtype": cfg.dtype,
            "adapter": str(adapter),
            "k": k,
            "sampling": dataclasses.asdict(sampling),
            "thinking": cfg.thinking,
            "few_shot": cfg.few_shot,
            "problems": {n: [(p.id, prompt_fn(p)) for p in ps] for n, ps in benchmarks.items()},
        }
    )
    out = Path(cfg.out) / "eval" / f"{label}-{key}"
    backend = LazyBackend(cfg, str(adapter) if adapter else None)
    return evaluate(
        backend,
        load_tokenizer(cfg.model),
        benchmarks,
        k=k,
        sampling=sampling,
        out_dir=out,
        prompt_fn=prompt_fn,
        thinking=THINKING[cfg.thinking],
        few_shot=cfg.few_shot,
    )


def train_config(cfg, algo: str, data: list[str], *overrides: dict) -> cfgmod.TrainConfig:
    """A TrainConfig from the experiment's shared knobs, then each override in turn."""
    values = {
        "algo": algo,
        "data": data,
        "model": cfg.model,
        "dtype": cfg.dtype,
        "device": cfg.device,
        "seed": cfg.seed,
        "few_shot": cfg.few_shot,
        "thinking": cfg.thinking,
        "gen_batch": cfg.gen_batch,
        "backend": cfg.backend,
        "max_new_tokens": cfg.max_new_tokens,
    }
    for o in overrides:
        values.update(o)
    return cfgmod.from_dict(cfgmod.TrainConfig, values)


def run_training(cfg, tcfg: cfgmod.TrainConfig):
    """Train (or resume, or find finished) ``tcfg`` in ``<out>/train/<algo>-<hash>``: one
    folder per distinct configuration, whichever notebook asks for it."""
    from sdlib.train import REVISION, train

    key = digest(
        {
            "revision": REVISION,
            **{
                k: v
                for k, v in dataclasses.asdict(tcfg).items()
                if k not in ("out", "save_every", "sample_every")
            },
        }
    )
    tcfg = dataclasses.replace(tcfg, out=str(Path(cfg.out) / "train" / f"{tcfg.algo}-{key}"))
    return train(tcfg)


def final_adapter(run) -> Path:
    last = run.latest()
    if last is None:
        raise FileNotFoundError(f"run {run.path} has no checkpoint; rerun it to finish")
    return last / "adapter"


def metrics_frame(run) -> pd.DataFrame:
    return pd.DataFrame(run.read("metrics.jsonl"))


class Results:
    """Tables (csv) and figures (png) of one experiment, in ``<out>/<name>/``."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.tables: dict[str, pd.DataFrame] = {}
        self.figures: dict[str, Path] = {}

    def table(self, name: str, frame: pd.DataFrame) -> pd.DataFrame:
        (self.folder / "tables").mkdir(parents=True, exist_ok=True)
        frame.to_csv(self.folder / "tables" / f"{name}.csv")
        self.tables[name] = frame
        return frame

    def figure(self, name: str, fig) -> Path:
        import matplotlib.pyplot as plt

        (self.folder / "figures").mkdir(parents=True, exist_ok=True)
        path = self.folder / "figures" / f"{name}.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        self.figures[name] = path
        return path

    def show(self) -> None:
        """Display every table and figure (in a notebook)."""
        from IPython.display import Image, Markdown, display

        for name, frame in self.tables.items():
            display(Markdown(f"**{name}**"), frame.round(3))
        for path in self.figures.values():
            display(Image(filename=str(path)))


def run_eval(cfg: cfgmod.EvalConfig) -> EvalResult:
    """``sdlib eval``: load, sample k per problem, grade, print and return the table."""
    benchmarks = load_benchmarks(cfg.data, cfg.limit)
    out = Path(cfg.out) if cfg.out else None
    if out is not None:
        cfgmod.save(cfg, out / "params.yaml")
    policy = load_policy(cfg.model, dtype=cfg.dtype, device=cfg.device, adapter=cfg.lora or None)
    backend = TransformersBackend(policy.model, policy.tokenizer, batch_size=cfg.gen_batch)
    sampling = Sampling(cfg.max_new_tokens, cfg.temperature, cfg.top_p, seed=cfg.seed)
    result = evaluate(
        backend,
        policy.tokenizer,
        benchmarks,
        k=cfg.k,
        sampling=sampling,
        out_dir=out,
        thinking=THINKING[cfg.thinking],
        few_shot=cfg.few_shot,
    )
    if out is not None:
        result.table.to_csv(out / "table.csv")
    print(format_table(result.table))
    return result


def format_table(table: pd.DataFrame) -> str:
    cols = [c for c in table.columns if not c.startswith("epi/")]
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        return table[cols].round(3).to_string()
