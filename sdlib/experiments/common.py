"""What every experiment shares: building a policy and backend from a config, evaluating."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sdlib import config as cfgmod
from sdlib.evaluate import EvalResult, evaluate
from sdlib.models import load_policy
from sdlib.problems import load_problems
from sdlib.prompts import THINKING, student_prompt
from sdlib.rollout import Sampling, TransformersBackend


def load_benchmarks(specs: list[str], limit: int = 0) -> dict[str, list]:
    """Problem sets by name; malformed rows were reported by the loader and are left out."""
    sets = {}
    for spec in specs:
        loaded = load_problems(spec)
        problems = list(loaded)
        sets[loaded.name] = problems[:limit] if limit else problems
    return sets


def run_eval(cfg: cfgmod.EvalConfig) -> EvalResult:
    """``sdlib eval``: load, sample k per problem, grade, print and return the table."""
    if cfg.thinking not in THINKING:
        raise cfgmod.ConfigError(f"thinking = {cfg.thinking!r}; expected one of {list(THINKING)}")
    benchmarks = load_benchmarks(cfg.data, cfg.limit)
    out = Path(cfg.out) if cfg.out else None
    if out is not None:
        cfgmod.save(cfg, out / "params.yaml")
    policy = load_policy(cfg.model, dtype=cfg.dtype, device=cfg.device, adapter=cfg.lora or None)
    backend = TransformersBackend(policy.model, policy.tokenizer, batch_size=cfg.batch_size)
    sampling = Sampling(cfg.max_new_tokens, cfg.temperature, cfg.top_p, seed=cfg.seed)
    result = evaluate(
        backend,
        policy.tokenizer,
        benchmarks,
        k=cfg.k,
        sampling=sampling,
        out_dir=out,
        thinking=THINKING[cfg.thinking],
        prompt_fn=lambda p: student_prompt(p.question, few_shot=cfg.few_shot),
    )
    if out is not None:
        result.table.to_csv(out / "table.csv")
    print(format_table(result.table))
    return result


def format_table(table: pd.DataFrame) -> str:
    cols = [c for c in table.columns if not c.startswith("epi/")]
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        return table[cols].round(3).to_string()


def run_demo(preset: str, out: str = "") -> EvalResult:
    """The main job until the notebooks land: the bundled model on the built-in families."""
    path = Path(__file__).resolve().parents[2] / "params" / preset / "demo.yaml"
    if not path.exists():
        raise cfgmod.ConfigError(f"no preset {preset!r}: {path} does not exist")
    overrides = {"out": out or f"runs/{preset}/demo"}
    return run_eval(cfgmod.load(cfgmod.EvalConfig, path, overrides))
