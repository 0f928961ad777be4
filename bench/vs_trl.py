"""sdlib against Hugging Face TRL: the same GRPO and SDPO updates, side by side.

TRL is a bench-only dependency: ``pip install -e .[bench]`` (trl 1.16.0, whose
``GRPOTrainer`` and ``experimental.sdpo.SDPOTrainer`` are compared). sdlib never imports it.

1. Cross-check (one process, fp32 unless ``--check-dtype``). One fixed batch -- the same
   rollouts, rewards and LoRA weights (B perturbed so the student differs from the initial
   teacher) -- goes through sdlib's ``update_phase`` and through TRL's ``compute_loss``;
   each gives its loss and the global gradient norm of the adapter. TRL builds the SDPO
   teacher prompts itself (its template set to the paper's) and they must equal sdlib's
   token for token. TRL is handed sdlib's rollout log-probs as ``old_per_token_logps`` so
   that both apply the same importance weights. Conventions that differ, and how the
   check treats them (``CONVENTIONS``, printed with the table):
   - SDPO aggregation: TRL averages each sequence's tokens, then the sequences (sdlib's
     ``seq-mean-token-mean``); the paper and sdlib's default take one token-mean over the
     mini-batch. Compared at TRL's; the token-mean loss is shown beside it.
   - Importance weights: with one update per batch TRL computes no old log-probs and
     weights nothing (its ratio is exactly 1); sdlib divides by the sampler's log-probs,
     which differ from the trainer's by rounding (more in bf16).
   - TRL left-pads prompts and its positions count the padding; sdlib right-pads and
     counts from the first real token. RoPE sees relative positions only: rounding.
2. A/B timing: per algorithm, sdlib and TRL alternately (A B A B ...), every measurement
   in a fresh process (clean peak memory): load the model, one warm-up step, one timed
   step with rollout (each framework's own sampler; the rewards are forced to 1, 0, 1, 0,
   ... so every group has successes and failures), then one timed update on the fixed batch
   of the cross-check (identical tokens for both). Equal settings: model, dtype, prompts x
   rollouts, max new tokens, temperature 1, LoRA (one loader builds both models), micro-
   batch (TRL: per-device batch x gradient accumulation), one AdamW update per step (lr,
   weight decay 0.01, clip 1.0), the paper's loss knobs (GRPO: eps 0.2 / 0.28, no KL, no
   std division, token-mean; SDPO: top-100 + tail, alpha 0.5, IS clip 2, initial teacher,
   first other success). TRL's own defaults that would differ are turned off: gradient
   checkpointing and bf16 autocast (the weights carry the dtype, as in sdlib).

Columns: "step" = rollout + update in the framework's own loop (TRL: ``Trainer.train``,
timed by a callback); "rollout" = sampling, rewards and batch building (TRL:
``_prepare_inputs``); "update" = losses, backward and the optimizer step on the fixed
batch; tok/s counts response tokens; "peak" = resident-set growth during the phase
(bench/_common.py), "process" = the process's high-water mark. Ratios are sdlib / TRL
within a pair; medians over pairs.

    python bench/vs_trl.py                 # CPU, bundled model, bf16: ~21 min on 2 cores
    python bench/vs_trl.py --quick         # tiny random model, under a minute
    python bench/vs_trl.py --device cuda --model Qwen/Qwen2.5-1.5B-Instruct \\
        --max-new-tokens 512 --prompts 4 --rollouts 8 --micro-batch 8
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import torch
from _common import (
    MIB,
    add_threads_option,
    apply_threads,
    clock,
    device_name,
    markdown_table,
    peak_bytes,
    reset_peak,
)

from sdlib.config import TrainConfig, from_dict
from sdlib.datasets import load_problems
from sdlib.prompts import chat, chat_messages, student_prompt
from sdlib.rollout import Rollouts, Sampling, TransformersBackend
from sdlib.settings import DEFAULT_MODEL
from sdlib.train import core, loop, onpolicy
from sdlib.train.grpo import GRPO
from sdlib.train.sdpo import SDPO

ALGOS = {"grpo": GRPO, "sdpo": SDPO}
FRAMEWORKS = ("sdlib", "trl")
CONVENTIONS = {
    "sdpo": "TRL aggregates seq-mean-token-mean; the paper and sdlib default: token-mean",
    "grpo": "TRL dapo = token-mean over the generation batch, as sdlib",
}
RESULT = "RESULT "  # prefix of the worker's JSON line


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--check-dtype", default="fp32", choices=["fp32", "fp64"])
    parser.add_argument("--data", default="synthetic:word_problem:1:64")
    parser.add_argument("--prompts", type=int, default=2, help="prompts per step")
    parser.add_argument("--rollouts", type=int, default=8, help="rollouts per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="both frameworks recompute activations (TRL's default; sdlib's is off)",
    )
    parser.add_argument("--pairs", type=int, default=5, help="A/B pairs per algorithm")
    parser.add_argument("--algos", nargs="+", default=list(ALGOS), choices=list(ALGOS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-check", action="store_true")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny random model, 1 pair")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # framework:algo
    parser.add_argument("--batch", default=None, help=argparse.SUPPRESS)  # fixed batch json
    add_threads_option(parser)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # handed on to the workers
    if args.quick:
        args.model, args.pairs, args.max_new_tokens = "tiny-random:2x64", 1, 8
        args.prompts, args.rollouts, args.micro_batch = 2, 4, 4
    if (args.prompts * args.rollouts) % args.micro_batch:
        parser.error("--micro-batch must divide --prompts x --rollouts")
    if args.rollouts < 3:
        parser.error("--rollouts must be at least 3 (forced rewards need two successes)")
    return args


# ---------------------------------------------------------------------------- settings


def sdlib_config(args, algo: str, dtype: str, **over) -> TrainConfig:
    """The paper's knobs (PAPER.md) at the bench's scale; one optimizer update per step."""
    values = {
        "algo": algo,
        "model": args.model,
        "data": [args.data],
        "out": tempfile.gettempdir(),  # nothing is written: no run loop
        "prompts_per_step": args.prompts,
        "rollouts_per_prompt": args.rollouts,
        "prompts_per_update": args.prompts,
        "micro_batch": args.micro_batch,
        "max_new_tokens": args.max_new_tokens,
        "gen_batch": args.prompts * args.rollouts,
        "temperature": 1.0,
        "top_p": 1.0,
        "few_shot": True,
        "lr": args.lr,
        "lora_r": args.lora_r,
        "lora_alpha": 2 * args.lora_r,
        "dtype": dtype,
        "device": args.device,
        "seed": args.seed,
        "gradient_checkpointing": args.gradient_checkpointing,
        "track_kl": False,  # TRL at beta 0 computes no KL to the initial policy: no extra forward
        **over,
    }
    return from_dict(TrainConfig, values)


def problems_of(args):
    return load_problems(args.data)[: args.prompts]


def messages(question: str) -> list[dict]:
    """sdlib's student prompt (``prompts.chat`` with ``few_shot``) as TRL's chat prompt."""
    return chat_messages(student_prompt(question), few_shot=True)


def forced_rewards(n: int) -> list[float]:
    """1, 0, 1, 0, ...: with >= 3 rollouts every group has successes and failures, and
    every sample has another successful sibling (SDPO's demonstration)."""
    return [float(i % 2 == 0) for i in range(n)]


def alternating_reward(prompts, completions, **_):
    return forced_rewards(len(completions))


def trl_trainer(args, algo: str, policy, *, per_device: int, accumulation: int, out: str):
    """TRL's trainer around sdlib's model object (same weights, dtype and LoRA)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer
    from trl.experimental.sdpo import SDPOConfig, SDPOTrainer

    common = dict(
        output_dir=out,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        num_generations=args.rollouts,
        max_completion_length=args.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        learning_rate=args.lr,
        weight_decay=0.01,
        max_grad_norm=1.0,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_steps=2,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        gradient_checkpointing=args.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},  # as sdlib's loader
        bf16=False,
        shuffle_dataset=False,
        seed=args.seed,
        beta=0.0,
        epsilon=0.2,
        epsilon_high=0.28,
        scale_rewards="none",
        loss_type="dapo",
        use_cpu=args.device == "cpu",
        disable_tqdm=True,
    )
    if algo == "grpo":
        config, trainer_cls = GRPOConfig(**common), GRPOTrainer
    else:
        config = SDPOConfig(
            distillation_mode="topk_logits",
            distillation_topk=100,
            distillation_add_tail=True,
            distillation_alpha=0.5,
            distillation_is_clip=2.0,
            distillation_weight=1.0,
            teacher_model_kind="base",
            success_reward_threshold=0.5,
            dont_reprompt_on_self_success=True,
            # = sdlib's TEACHER_TEMPLATE (PAPER.md)
            solution_template="\nCorrect solution:\n\n{successful_previous_attempt}",
            reprompt_template="{prompt}{solution}{feedback}"
            "\n\nCorrectly solve the original question.",
            max_prompt_length=None,
            **common,
        )
        trainer_cls = SDPOTrainer
    data = Dataset.from_list([{"prompt": messages(p.question)} for p in problems_of(args)])
    return trainer_cls(
        model=policy.model,
        reward_funcs=alternating_reward,
        args=config,
        train_dataset=data,
        processing_class=policy.tokenizer,
    )


# ------------------------------------------------------------------------- the batch


def make_fixed_batch(args, path: Path) -> None:
    """Rollouts of the initial policy at temperature 1, written as JSON."""
    cfg = sdlib_config(args, "grpo", args.dtype)
    policy = core.load_training_policy(cfg)
    backend = TransformersBackend(policy.model, policy.tokenizer, cfg.gen_batch, progress=False)
    sampling = Sampling(args.max_new_tokens, 1.0, 1.0, seed=args.seed + 1)
    tok = policy.tokenizer
    texts = [chat(tok, student_prompt(p.question), few_shot=True) for p in problems_of(args)]
    ro = backend.generate(texts, n=args.rollouts, sampling=sampling)
    path.write_text(json.dumps(dataclasses.asdict(ro)))


def load_step_batch(args, path: Path, tokenizer) -> onpolicy.StepBatch:
    ro = Rollouts(**json.loads(path.read_text()))
    problems = problems_of(args)
    rewards = torch.tensor(forced_rewards(len(ro)))
    users = [student_prompt(p.question) for p in problems]
    return onpolicy.make_step_batch(problems, users, ro, rewards, tokenizer.pad_token_id)


def pad(rows: list[list], value, side: str, dtype=torch.long) -> torch.Tensor:
    width = max(map(len, rows))
    out = torch.full((len(rows), width), value, dtype=dtype)
    for i, r in enumerate(rows):
        if r:
            target = out[i, width - len(r) :] if side == "left" else out[i, : len(r)]
            target.copy_(torch.tensor(r, dtype=dtype))
    return out


def trl_inputs(trainer, sb, algo: str, device, with_old: bool) -> dict:
    """The fixed batch in the layout TRL's ``compute_loss`` takes (its ``_prepare_inputs``
    output): left-padded prompts, right-padded completions; SDPO teacher prompts from
    TRL's own builder."""
    ro, tok = sb.rollouts, trainer.processing_class
    prompt_ids = pad(ro.prompt_ids, tok.pad_token_id, "left")
    completion_ids = pad(ro.token_ids, tok.pad_token_id, "right")
    inputs = {
        "prompt_ids": prompt_ids,
        "prompt_mask": pad([[1] * len(p) for p in ro.prompt_ids], 0, "left"),
        "completion_ids": completion_ids,
        "completion_mask": pad([[1] * len(t) for t in ro.token_ids], 0, "right"),
    }
    inputs = {k: v.to(device) for k, v in inputs.items()}
    if with_old:
        old = pad(ro.logprobs, 0.0, "right", dtype=torch.float32)
        inputs["old_per_token_logps"] = old.to(device)
    if algo == "grpo":
        inputs["advantages"] = sb.extra["adv"].to(device).float()  # r - group mean, as TRL
        inputs["num_items_in_batch"] = inputs["completion_mask"].sum()
    else:
        prompts = [messages(sb.problems[i].question) for i in ro.prompt_index]
        rewards = sb.rewards.to(device)
        inputs.update(trainer.teacher_context_builder.build(inputs, prompts, rewards))
    return inputs


def grad_norm(model) -> float:
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([g.double().norm() for g in grads])))


# ------------------------------------------------------------------------ cross-check


def cross_check(args, batch_path: Path) -> list[dict]:
    """Loss and gradient norm of both frameworks on one fixed batch (module docstring)."""
    rows = []
    for algo in args.algos:
        cfg = sdlib_config(
            args,
            algo,
            args.check_dtype,
            micro_batch=args.prompts * args.rollouts,
            grad_clip=0.0,
            loss_agg="seq-mean-token-mean" if algo == "sdpo" else "token-mean",
        )
        policy = core.load_training_policy(cfg)
        perturb_lora(policy.model, args.seed)
        figures = {}
        for agg in (cfg.loss_agg, "token-mean") if algo == "sdpo" else (cfg.loss_agg,):
            sb = load_step_batch(args, batch_path, policy.tokenizer)
            figures[agg] = sdlib_loss(dataclasses.replace(cfg, loss_agg=agg), policy, sb)
        sb = load_step_batch(args, batch_path, policy.tokenizer)
        ALGOS[algo](cfg, policy, []).prepare(sb)
        with tempfile.TemporaryDirectory() as out:
            n = args.prompts * args.rollouts
            trainer = trl_trainer(args, algo, policy, per_device=n, accumulation=1, out=out)
            trl_loss, trl_norm, same = trl_figures(trainer, policy, sb, algo)
        ours_loss, ours_norm = figures[cfg.loss_agg]
        rows.append(
            {
                "algo": algo,
                "sdlib loss": ours_loss,
                "TRL loss": trl_loss,
                "loss rel. diff": abs(ours_loss - trl_loss) / max(abs(trl_loss), 1e-30),
                "sdlib grad norm": ours_norm,
                "TRL grad norm": trl_norm,
                "grad rel. diff": abs(ours_norm - trl_norm) / max(trl_norm, 1e-30),
                "prompts equal": same,
                "sdlib token-mean loss": figures["token-mean"][0],
            }
        )
        del trainer, policy
    return rows


def perturb_lora(model, seed: int, scale: float = 0.02) -> None:
    """LoRA B starts at 0 (student = initial teacher, no gradient for A): move it."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=torch.float64))


def sdlib_loss(cfg, policy, sb) -> tuple[float, float]:
    """``update_phase`` with one micro-batch, no clipping and no optimizer step."""
    algo = ALGOS[cfg.algo](cfg, policy, [])
    algo.prepare(sb)
    opt, sched = core.make_optimizer(policy.model, cfg)
    opt.step = lambda: None  # keep the weights: figures only
    policy.model.zero_grad(set_to_none=True)
    stats = loop.update_phase(algo, policy.model, sb, opt, sched, cfg)
    policy.model.zero_grad(set_to_none=True)
    return stats["train/loss"], stats["train/grad_norm"]


def trl_figures(trainer, policy, sb, algo) -> tuple[float, float, bool]:
    model, device = policy.model, policy.device
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train otherwise
    model.train()
    inputs = trl_inputs(trainer, sb, algo, device, with_old=True)
    model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(model, inputs)
    loss.backward()
    loss = loss.detach()
    norm = grad_norm(model)
    model.zero_grad(set_to_none=True)
    # the prompts TRL would tokenize itself: the student's, and (SDPO) the teacher's
    ro = sb.rollouts
    questions = [messages(sb.problems[i].question) for i in ro.prompt_index]
    rendered = trainer._tokenize_prompts(questions)
    if isinstance(rendered, tuple):  # GRPOTrainer: (ids, images, multimodal fields)
        rendered = rendered[0]
    same = [list(ids) for ids in rendered] == ro.prompt_ids
    if algo == "sdpo":
        ours = sb.extra["teacher"]
        for i in range(len(ro)):
            mine = ours.input_ids[i, : int(ours.attention_mask[i].sum())].tolist()
            row = inputs["teacher_input_ids"][i][inputs["teacher_attention_mask"][i].bool()]
            same &= row.tolist() == mine
    return float(loss), norm, same


# ---------------------------------------------------------------------------- timing


def run_worker(args) -> dict:
    """One measurement in this (fresh) process; prints one RESULT line."""
    framework, algo = args.worker.split(":")
    apply_threads(args.threads)
    device = args.device
    cfg = sdlib_config(args, algo, args.dtype)
    policy = core.load_training_policy(cfg)
    process_peak = peak_bytes(device)
    run = sdlib_run if framework == "sdlib" else trl_run
    result = run(args, algo, cfg, policy, Path(args.batch))
    result["process_peak"] = max(process_peak, result.pop("hwm"))
    return {"framework": framework, "algo": algo, **result}


def sdlib_run(args, algo, cfg, policy, batch_path) -> dict:
    algo_obj = ALGOS[algo](cfg, policy, [])
    backend = onpolicy.make_backend(cfg, policy)
    problems = problems_of(args)
    opt, sched = core.make_optimizer(policy.model, cfg)
    for step in (0, 1):  # step 0: warm-up
        t0 = clock(args.device)
        batch = core.step_items(problems, step, args.prompts, cfg.seed)
        sb = onpolicy.rollout_phase(policy, backend, batch, cfg, step)
        sb.rewards = torch.tensor(forced_rewards(len(sb.rollouts)))
        t1 = clock(args.device)
        algo_obj.prepare(sb)
        loop.update_phase(algo_obj, policy.model, sb, opt, sched, cfg)
        t2 = clock(args.device)
    hwm = peak_bytes(args.device)  # nothing was reset yet: the whole process so far
    step = {
        "step_s": t2 - t0,
        "rollout_s": t1 - t0,
        "step_tokens": sum(sb.rollouts.lengths),
    }
    sb = load_step_batch(args, batch_path, policy.tokenizer)
    algo_obj.prepare(sb)
    base = reset_peak(args.device)
    t0 = clock(args.device)
    loop.update_phase(algo_obj, policy.model, sb, opt, sched, cfg)
    update_s = clock(args.device) - t0
    peak = peak_bytes(args.device)
    return {
        **step,
        "update_s": update_s,
        "update_tokens": sum(sb.rollouts.lengths),
        "update_peak": peak - base,
        "hwm": max(hwm, peak),
    }


def trl_run(args, algo, cfg, policy, batch_path) -> dict:
    from transformers import TrainerCallback

    device, n = args.device, args.prompts * args.rollouts
    clocks = {"end": [], "rollout": [0.0, 0.0]}

    class StepClock(TrainerCallback):
        def on_step_end(self, _args, state, control, **kw):
            clocks["end"].append(clock(device))

    with tempfile.TemporaryDirectory() as out:
        trainer = trl_trainer(
            args,
            algo,
            policy,
            per_device=args.micro_batch,
            accumulation=n // args.micro_batch,
            out=out,
        )
        prepare = trainer._prepare_inputs

        def timed_prepare(batch):
            start = clock(device)
            result = prepare(batch)
            clocks["rollout"][min(trainer.state.global_step, 1)] += clock(device) - start
            return result

        trainer._prepare_inputs = timed_prepare
        trainer.add_callback(StepClock())
        generated = []
        reward = trainer.reward_funcs[0]

        def counting_reward(prompts, completions, completion_ids=None, **kw):
            generated.append(sum(len(c) for c in completion_ids))
            return reward(prompts, completions, **kw)

        counting_reward.__name__ = reward.__name__
        trainer.reward_funcs[0] = counting_reward
        trainer.train()
        step = {
            "step_s": clocks["end"][1] - clocks["end"][0],
            "rollout_s": clocks["rollout"][1],
            "step_tokens": generated[-1],
        }
        hwm = peak_bytes(device)  # nothing was reset yet: the whole process so far
        sb = load_step_batch(args, batch_path, policy.tokenizer)
        if algo == "grpo":
            GRPO(cfg, policy, []).prepare(sb)  # the advantages
        inputs = trl_inputs(trainer, sb, algo, policy.device, with_old=False)
        base = reset_peak(device)
        t0 = clock(device)
        trl_update(trainer, policy.model, inputs, args.micro_batch)
        update_s = clock(device) - t0
        peak = peak_bytes(device)
    return {
        **step,
        "update_s": update_s,
        "update_tokens": sum(sb.rollouts.lengths),
        "update_peak": peak - base,
        "hwm": max(hwm, peak),
    }


def trl_update(trainer, model, inputs: dict, micro_batch: int) -> None:
    """What ``Trainer.training_step`` does after ``_prepare_inputs``, over the gradient
    accumulation window, then the clip and the optimizer step of the training loop. The
    batch is sliced row-wise at full width, as TRL's ``split_tensor_dict`` does."""
    model.train()
    rows = inputs["prompt_ids"].shape[0]
    for lo in range(0, rows, micro_batch):
        part = {
            k: v[lo : lo + micro_batch] if torch.is_tensor(v) and v.dim() > 0 else v
            for k, v in inputs.items()
        }
        trainer.compute_loss(model, part).backward()
    params = [p for p in model.parameters() if p.requires_grad]
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def spawn(args, framework: str, algo: str, batch_path: Path) -> dict:
    argv = [sys.executable, __file__, *args.argv, "--worker", f"{framework}:{algo}"]
    argv += ["--batch", str(batch_path)]
    done = subprocess.run(argv, capture_output=True, text=True, env=os.environ.copy())
    lines = [x for x in done.stdout.splitlines() if x.startswith(RESULT)]
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.splitlines()[-25:])
        raise RuntimeError(f"{framework}:{algo} measurement failed ({done.returncode}):\n{tail}")
    return json.loads(lines[-1][len(RESULT) :])


def timing(args, batch_path: Path) -> list[dict]:
    results = []
    for algo in args.algos:
        for pair in range(args.pairs):
            order = FRAMEWORKS if pair % 2 == 0 else FRAMEWORKS[::-1]
            for framework in order:
                start = time.perf_counter()
                r = spawn(args, framework, algo, batch_path)
                r["pair"] = pair
                results.append(r)
                print(
                    f"  {algo} pair {pair} {framework:5s} step {r['step_s']:6.2f} s, "
                    f"update {r['update_s']:6.2f} s, update peak "
                    f"{r['update_peak'] / MIB:7.0f} MiB ({time.perf_counter() - start:.0f} s)",
                    flush=True,
                )
    return results


# --------------------------------------------------------------------------- reports


def median(values) -> float:
    return statistics.median(values) if values else math.nan


def timing_table(results: list[dict]) -> str:
    rows = []
    for algo in dict.fromkeys(r["algo"] for r in results):
        mine = [r for r in results if r["algo"] == algo]
        by = {f: [r for r in mine if r["framework"] == f] for f in FRAMEWORKS}
        pairs = [(a, b) for a in by["sdlib"] for b in by["trl"] if a["pair"] == b["pair"]]
        for f in FRAMEWORKS:
            rs = by[f]
            rows.append(
                [
                    algo.upper(),
                    "sdlib" if f == "sdlib" else f"TRL {version('trl')}",
                    f"{median([r['step_s'] for r in rs]):.2f}",
                    f"{median([r['step_tokens'] / r['step_s'] for r in rs]):.0f}",
                    f"{median([r['rollout_s'] for r in rs]):.2f}",
                    f"{median([r['update_s'] for r in rs]):.2f}",
                    f"{median([r['update_tokens'] / r['update_s'] for r in rs]):.0f}",
                    f"{median([r['update_peak'] for r in rs]) / MIB:.0f}",
                    f"{median([r['process_peak'] for r in rs]) / MIB:.0f}",
                ]
            )

        def ratio(key, pairs=pairs):
            return median([a[key] / b[key] for a, b in pairs if b[key] > 0])

        def rate(pairs=pairs):
            return median(
                [
                    (a["step_tokens"] / a["step_s"]) / (b["step_tokens"] / b["step_s"])
                    for a, b in pairs
                ]
            )

        rows.append(
            [
                algo.upper(),
                "**sdlib / TRL**",
                f"{ratio('step_s'):.2f}x",
                f"{rate():.2f}x",
                f"{ratio('rollout_s'):.2f}x",
                f"{ratio('update_s'):.2f}x",
                f"{1 / ratio('update_s'):.2f}x",
                f"{ratio('update_peak'):.2f}x",
                f"{ratio('process_peak'):.2f}x",
            ]
        )
    columns = [
        "algo",
        "framework",
        "step s",
        "step tok/s",
        "rollout s",
        "update s",
        "update tok/s",
        "update peak MiB",
        "process MiB",
    ]
    return markdown_table(columns, rows)


def check_table(rows: list[dict]) -> str:
    body = [
        [
            r["algo"].upper(),
            f"{r['sdlib loss']:.9g}",
            f"{r['TRL loss']:.9g}",
            f"{r['loss rel. diff']:.1e}",
            f"{r['sdlib grad norm']:.9g}",
            f"{r['TRL grad norm']:.9g}",
            f"{r['grad rel. diff']:.1e}",
            "yes" if r["prompts equal"] else "NO",
            f"{r['sdlib token-mean loss']:.9g}",
        ]
        for r in rows
    ]
    columns = [
        "algo",
        "sdlib loss",
        "TRL loss",
        "rel. diff",
        "sdlib grad norm",
        "TRL grad norm",
        "rel. diff",
        "prompts equal",
        "sdlib token-mean loss",
    ]
    notes = "\n".join(f"- {a.upper()}: {c}" for a, c in CONVENTIONS.items())
    return markdown_table(columns, body) + "\n" + notes


def versions() -> str:
    import peft
    import transformers
    import trl

    return (
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"peft {peft.__version__}, trl {trl.__version__}"
    )


def quiet() -> None:
    """Deprecation chatter and weight-loading bars of the libraries, off."""
    import warnings

    from transformers.utils import logging

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    logging.disable_progress_bar()
    logging.set_verbosity_error()


def main(argv=None) -> None:
    args = parse_args(argv)
    quiet()
    if args.worker:
        print(RESULT + json.dumps(run_worker(args)), flush=True)
        return
    apply_threads(args.threads)
    start = time.perf_counter()
    print(f"# sdlib vs TRL ({time.strftime('%Y-%m-%d')})")
    print(f"{device_name(args.device)}; {versions()}")
    print(
        f"{args.model}, {args.dtype}, {args.prompts} prompts x {args.rollouts} rollouts, "
        f"{args.max_new_tokens} new tokens, micro-batch {args.micro_batch}, "
        f"LoRA r {args.lora_r}, {args.pairs} pairs\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        batch_path = Path(tmp) / "batch.json"
        make_fixed_batch(args, batch_path)
        lengths = Rollouts(**json.loads(batch_path.read_text())).lengths
        print(f"fixed batch: {len(lengths)} responses, {sum(lengths)} tokens\n")
        if not args.skip_check:
            print(f"## Cross-check on the fixed batch ({args.check_dtype})\n")
            print(check_table(cross_check(args, batch_path)) + "\n", flush=True)
        if not args.skip_timing:
            print("## A/B timing (medians over pairs)\n", flush=True)
            results = timing(args, batch_path)
            print("\n" + timing_table(results))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
