"""Trainers on the smoke model: losses against the reference formula, masking, teachers,
micro-batching, metrics and exact resumption."""

import dataclasses
import importlib.util
import json
import math
import os
import shutil

import pytest
import torch

from sdlib.config import TrainConfig, from_dict
from sdlib.grading import Grade
from sdlib.losses import loss_normalizer
from sdlib.metrics import expected_keys
from sdlib.models import LLAMA_LINEAR, initial_policy
from sdlib.prompts import chat
from sdlib.runfolder import RunFolder
from sdlib.train import core, loop, onpolicy
from sdlib.train.grpo import GRPO
from sdlib.train.sdpo import SDPO, choose_demonstrations

SMOKE = dict(
    model="tiny-random:2x64",
    data=["synthetic:addition:1:16"],
    steps=2,
    prompts_per_step=2,
    rollouts_per_prompt=4,
    prompts_per_update=2,
    micro_batch=8,
    max_new_tokens=8,
    save_every=1,
    lr=1e-2,
    topk=5,
    lora_r=4,
)


# 4-bit base weights on the CPU: bitsandbytes' CPU backend (tests/test_four_bit.py)
NEEDS_4BIT = pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed"
)


def cfg_for(tmp_path, **kw):
    return from_dict(TrainConfig, {**SMOKE, "out": str(tmp_path / "run"), **kw})


def parity_grader(text, gold, rules="careful"):
    """A reward the random model earns about half the time, deterministic in the text."""
    return Grade(len(text) % 2 == 0, "exact")


def step_batch(cfg, rewards):
    """One rollout of the smoke model with the given rewards (hand-built grading)."""
    policy = core.load_training_policy(cfg)
    backend = onpolicy.make_backend(cfg, policy)
    from sdlib.datasets import load_benchmarks

    problems = list(load_benchmarks(cfg.data).values())[0][: cfg.prompts_per_step]
    sb = onpolicy.rollout_phase(policy, backend, problems, cfg, step=0)
    sb.rewards = torch.tensor(rewards, dtype=torch.float)
    return policy, sb


def norm_of(algo, sb, mode="token-mean"):
    """The loop's normalizers of a one-update step: every sample in the update."""
    every = torch.ones(len(sb.group), dtype=torch.bool)
    return loop.normalizers(algo.counted(sb), every, sb, mode)


def perturb_adapter(model, scale=3.0):
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(scale * torch.randn(p.shape, generator=gen))


def test_choose_demonstrations_first_other_success():
    rewards = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    group = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    assert choose_demonstrations(rewards, group, 0.5, True) == [1, 2, 1, 1, 6, 6, None, 6]
    assert choose_demonstrations(rewards, group, 0.5, False) == [1, 1, 1, 1, 6, 6, 6, 6]


def initial_logits(model, ids):
    with initial_policy(model):
        return model(ids).logits


def reference_sdpo_terms(model, tok, sb, alpha, k, is_clip, teacher=initial_logits, demos=None):
    """Float64 brute force: full logits, explicit top-k + tail buckets, the JSD formula;
    ``teacher(model, ids)``: the teacher's logits. {sample: per-token losses} of the samples
    with a demonstration (``demos``: the teacher text of each sample, or None)."""
    terms = {}
    if demos is None:
        chosen = choose_demonstrations(sb.rewards, sb.group, 0.5, True)
        demos = [None if d is None else sb.rollouts.text[d] for d in chosen]
    for i, demo in enumerate(demos):
        if demo is None:
            continue
        user = sb.users[sb.rollouts.prompt_index[i]]
        t_text = chat(
            tok,
            f"{user}\nCorrect solution:\n\n{demo}\n\nCorrectly solve the original question.",
        )
        t_ids = tok(t_text, add_special_tokens=False)["input_ids"]
        s_ids, resp = sb.rollouts.prompt_ids[i], sb.rollouts.token_ids[i]
        with torch.no_grad():
            s = model(torch.tensor([s_ids + resp])).logits[0].double().log_softmax(-1)
            t = teacher(model, torch.tensor([t_ids + resp]))[0].double().log_softmax(-1)
        s = s[len(s_ids) - 1 : len(s_ids) - 1 + len(resp)]
        t = t[len(t_ids) - 1 : len(t_ids) - 1 + len(resp)]
        terms[i] = []
        for pos, token in enumerate(resp):
            idx = s[pos].topk(k).indices
            ps = s[pos].exp()[idx].tolist()
            pt = t[pos].exp()[idx].tolist()
            ps.append(1 - sum(ps))
            pt.append(1 - sum(pt))
            m = [(1 - alpha) * a + alpha * b for a, b in zip(ps, pt, strict=True)]
            jsd = alpha * sum(b * math.log(b / c) for b, c in zip(pt, m, strict=True)) + (
                1 - alpha
            ) * sum(a * math.log(a / c) for a, c in zip(ps, m, strict=True))
            ratio = math.exp(s[pos, token].item() - sb.rollouts.logprobs[i][pos])
            terms[i].append(min(ratio, is_clip) * jsd)
    return terms


def reference_sdpo_loss(model, tok, sb, cfg, alpha, k, is_clip, teacher=initial_logits):
    """The token-mean of ``reference_sdpo_terms``."""
    terms = reference_sdpo_terms(model, tok, sb, alpha, k, is_clip, teacher)
    return sum(map(sum, terms.values())) / sum(map(len, terms.values()))


def trust_region_logits(mix):
    """The reference's trust-region teacher: lerp(initial logits, current logits, mix)."""

    def logits(model, ids):
        return torch.lerp(initial_logits(model, ids), model(ids).logits, mix)

    return logits


@pytest.mark.parametrize(
    "finetune, teacher, mix, reference",
    [
        ("lora", "initial", 0.0, initial_logits),
        # full fine-tuning trains the output layer too: the initial teacher is the initial
        # weights throughout, head included
        ("full", "initial", 0.0, initial_logits),
        ("lora", "trust-region", 0.3, trust_region_logits(0.3)),
        ("full", "trust-region", 0.3, trust_region_logits(0.3)),
        ("lora", "trust-region", 0.0, initial_logits),
        ("lora", "trust-region", 1.0, lambda model, ids: model(ids).logits),
    ],
)
def test_sdpo_step_loss_equals_reference_formula(tmp_path, finetune, teacher, mix, reference):
    cfg = cfg_for(
        tmp_path, algo="sdpo", alpha=0.5, is_clip=2.0, dtype="fp64", finetune=finetune,
        teacher=teacher, ema_rate=mix,
    )  # fmt: skip
    policy, sb = step_batch(cfg, [0, 1, 1, 0, 0, 0, 1, 0])
    perturb_weights(policy.model, finetune)  # student and teacher differ beyond context
    algo = SDPO(cfg, policy, [])
    algo.prepare(sb)
    assert sb.active.tolist() == [True, True, True, True, True, True, False, True]
    rows = sb.active.nonzero().squeeze(1)
    loss, _ = algo.micro_loss(policy.model, sb, rows, norm_of(algo, sb))
    ref = reference_sdpo_loss(policy.model, policy.tokenizer, sb, cfg, 0.5, 5, 2.0, reference)
    assert float(loss) == pytest.approx(ref, rel=1e-9)


def grads(model):
    return {
        n: p.grad.clone()
        for n, p in model.named_parameters()
        if p.requires_grad and p.grad is not None
    }


def run_update(cfg, policy, sb, algo_cls):
    algo = algo_cls(cfg, policy, [])
    algo.prepare(sb)
    opt, sched = core.make_optimizer(policy.model, cfg)
    opt.step = lambda: None  # keep the weights: compare gradients only
    loop.update_phase(algo, policy.model, sb, opt, sched, cfg)
    return grads(policy.model), sb


def both_gradients(policy, sb, *runs):
    """The gradients of one update of each (cfg, algorithm class) on the same batch."""
    found = []
    for cfg, algo_cls in runs:
        policy.model.zero_grad(set_to_none=True)
        found.append(run_update(cfg, policy, sb, algo_cls)[0])
    assert all(g.keys() == found[0].keys() for g in found) and found[0]
    return found


@pytest.mark.parametrize("algo_cls, name", [(SDPO, "sdpo"), (GRPO, "grpo")])
def test_micro_batching_gives_the_same_gradient(tmp_path, algo_cls, name):
    rewards = [0, 1, 1, 0, 1, 0, 0, 0]
    full = cfg_for(tmp_path, algo=name, micro_batch=8, grad_clip=0.0)
    micro = cfg_for(tmp_path, algo=name, micro_batch=1, grad_clip=0.0)
    policy, sb = step_batch(full, rewards)
    perturb_adapter(policy.model)
    g_full, g_micro = both_gradients(policy, sb, (full, algo_cls), (micro, algo_cls))
    for n in g_full:
        assert torch.allclose(g_full[n], g_micro[n], rtol=1e-4, atol=1e-7), n


def test_masked_samples_contribute_nothing(tmp_path):
    cfg = cfg_for(tmp_path, algo="sdpo", grad_clip=0.0)
    # sample 6 is the only success of group 1: it has no *other* successful sibling
    policy, sb = step_batch(cfg, [0, 1, 1, 0, 0, 0, 1, 0])
    perturb_adapter(policy.model)
    g_all, sb = run_update(cfg, policy, sb, SDPO)
    assert not bool(sb.active[6])
    # changing the masked sample's response changes nothing
    policy.model.zero_grad(set_to_none=True)
    sb.rollouts.token_ids[6] = sb.rollouts.token_ids[6][:2]
    sb.student = core.pack(sb.rollouts.prompt_ids, sb.rollouts.token_ids, 2)
    g_again, _ = run_update(cfg, policy, sb, SDPO)
    for n in g_all:
        assert torch.allclose(g_all[n], g_again[n], atol=1e-8)


def perturb_weights(model, finetune: str) -> None:
    """Move the policy away from its start: LoRA's B factors, or every weight."""
    if finetune == "lora":
        return perturb_adapter(model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_initial_teacher_is_the_untrained_model(tmp_path, finetune):
    cfg = cfg_for(tmp_path, algo="sdpo", finetune=finetune)
    policy, _ = step_batch(cfg, [0] * 8)
    ids = torch.tensor([[1, 400, 500, 600, 700]])
    with torch.no_grad():
        before = policy.model(ids).logits
        perturb_weights(policy.model, finetune)
        assert not torch.allclose(policy.model(ids).logits, before, atol=1e-4)
        with initial_policy(policy.model):
            assert torch.allclose(policy.model(ids).logits, before, atol=1e-6)
        assert not torch.allclose(policy.model(ids).logits, before, atol=1e-4)  # put back


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_ema_teacher_tracks_the_policy_at_its_rate(tmp_path, finetune):
    cfg = cfg_for(tmp_path, algo="sdpo", teacher="ema", ema_rate=0.25, finetune=finetune)
    policy, _ = step_batch(cfg, [0] * 8)
    algo = SDPO(cfg, policy, [])
    live = {n: p for n, p in policy.model.named_parameters() if p.requires_grad}
    ema = algo.teacher.copy.tensors
    assert ema.keys() == live.keys()  # the adapter's factors, or every weight
    start = {n: t.detach().clone() for n, t in ema.items()}
    with torch.no_grad():
        for p in live.values():
            p.add_(1.0)
    algo.after_step(policy.model)
    for n in live:
        assert torch.allclose(ema[n], 0.75 * start[n] + 0.25 * live[n].detach()), n
    assert not any(t.requires_grad for t in ema.values())
    ids = torch.tensor([[1, 400, 500, 600, 700]])
    with torch.no_grad(), algo.teacher.views(policy.model)[0][1]:
        teacher = policy.model(ids).logits
        lm_head = core.unwrap(policy.model).get_output_embeddings().weight
        embedding = core.unwrap(policy.model).get_input_embeddings().weight
        assert lm_head is embedding  # tied weights stay tied inside the view
    with torch.no_grad():  # the same numbers as the blended weights loaded into the model
        for n, p in live.items():
            p.copy_(ema[n])
        assert torch.allclose(policy.model(ids).logits, teacher, atol=1e-6)


def test_a_teacher_view_leaves_the_students_gradient_alone(tmp_path):
    # the view replaces each module's parameter entry, not its .data: a backward after
    # the view must still read the live weights the student's forward used
    cfg = cfg_for(tmp_path, algo="sdpo", teacher="ema", finetune="full", dtype="fp64")
    policy, _ = step_batch(cfg, [0] * 8)
    algo = SDPO(cfg, policy, [])
    perturb_weights(policy.model, "full")  # the live weights now differ from the copy
    ids = torch.tensor([[1, 400, 500, 600, 700]])

    def gradient(with_view: bool):
        policy.model.zero_grad(set_to_none=True)
        loss = policy.model(ids).logits.logsumexp(-1).sum()
        if with_view:
            with torch.no_grad(), algo.teacher.views(policy.model)[0][1]:
                policy.model(ids)
        loss.backward()
        return grads(policy.model)

    plain, viewed = gradient(False), gradient(True)
    assert plain.keys() == viewed.keys() and len(plain) == len(list(policy.model.parameters()))
    for n in plain:
        assert torch.equal(plain[n], viewed[n]), n


def test_master_weights_take_the_steps_bf16_weights_round_away():
    # the reference's full fine-tuning rate on bf16 weights: plain AdamW moves no weight,
    # MasterAdamW's float32 masters follow a float32 AdamW on the same gradients exactly
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(64, 32, generator=gen)
    gradients = [torch.randn(64, 32, generator=gen).bfloat16() for _ in range(5)]
    kw = {"lr": 1e-6, "weight_decay": 0.01}
    plain = torch.nn.Parameter(start.bfloat16())
    mixed = torch.nn.Parameter(start.bfloat16())
    exact = torch.nn.Parameter(start.bfloat16().float())
    optimizers = [
        torch.optim.AdamW([plain], **kw),
        core.MasterAdamW([mixed], **kw),
        torch.optim.AdamW([exact], **kw),
    ]
    for g in gradients:
        for param, opt in zip((plain, mixed, exact), optimizers, strict=True):
            opt.zero_grad()
            param.grad = g.to(param.dtype)
            opt.step()
    assert torch.equal(plain, start.bfloat16())  # every update rounded away
    (master,) = optimizers[1].masters
    assert not torch.equal(master, start.bfloat16().float())
    assert torch.equal(master, exact.detach())
    assert torch.equal(mixed.detach(), master.bfloat16())
    optimizers[1].zero_grad()
    assert mixed.grad is None and master.grad is None  # the model's gradients too


def test_full_finetuning_memory_is_what_the_estimate_counts(monkeypatch):
    # counted at the optimizer step, the peak outside the activations: bf16 weights, the
    # gradients in float32 on the masters, the masters, AdamW's moments, one frozen copy
    from sdlib.models import full_finetune_bytes, keep_initial, load_policy

    model = load_policy("tiny-random:2x64", dtype="bf16").model
    keep_initial(model)
    opt = core.MasterAdamW(list(model.parameters()), lr=1e-5)
    held = []

    def counting_step(self, *a, **kw):
        tensors = [*model.parameters(), *self.masters, *(m.grad for m in self.masters)]
        tensors += [v for state in self.state.values() for k, v in state.items() if k != "step"]
        tensors += list(model._sdlib_initial_weights.tensors.values())
        tensors += [p.grad for p in model.parameters() if p.grad is not None]
        held.append(sum(t.numel() * t.element_size() for t in tensors))
        return real_step(self, *a, **kw)

    real_step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", counting_step)
    for _ in range(2):  # the moments exist from the first step on
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        opt.step()
    weights = sum(p.numel() for p in model.parameters())
    assert held[1] == full_finetune_bytes(weights, torch.bfloat16, copies=1)
    assert all(p.grad is None for p in model.parameters()) and all(
        m.grad is None for m in opt.masters
    )


@pytest.mark.parametrize("memory, choice", [(2**40, "full"), (2**20, "lora")])
def test_finetune_auto_takes_every_weight_only_when_the_device_holds_them(
    tmp_path, monkeypatch, capsys, memory, choice
):
    from sdlib import models

    monkeypatch.setattr(models, "device_memory", lambda device: memory)
    cfg = core.resolve_finetune(cfg_for(tmp_path, algo="sdpo", finetune="auto"))
    assert cfg.finetune == choice
    assert f"finetune auto -> {choice}" in capsys.readouterr().out


def test_finetune_auto_under_fsdp_counts_the_shards_and_never_needs_a_weight_copy(
    tmp_path, monkeypatch, capsys
):
    from sdlib import models

    weights = models.parameter_count("tiny-random:2x64")
    alone = models.full_finetune_bytes(weights, torch.float32, copies=0)
    monkeypatch.setattr(models, "device_memory", lambda device: alone)  # half: too little
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("WORLD_SIZE", "4")
    # weights whole (4 bytes), gradient and two moments a quarter each (3 bytes)
    assert models.full_finetune_bytes(weights, torch.float32, 0, shards=4) == weights * 7
    live = cfg_for(tmp_path, algo="sdpo", finetune="auto", teacher="live", track_kl=False)
    assert core.resolve_finetune(live).finetune == "full"  # 7/16 of the memory fits in half
    assert "per process over 4 (FSDP)" in capsys.readouterr().out
    initial = cfg_for(tmp_path, algo="sdpo", finetune="auto", teacher="initial")
    assert core.resolve_finetune(initial).finetune == "lora"
    assert "FSDP cannot swap in" in capsys.readouterr().out


def test_the_lora_learning_rate_scale_applies_to_lora_only(tmp_path):
    for finetune, lr in (("lora", 0.05), ("full", 0.01)):
        cfg = cfg_for(tmp_path, algo="grpo", finetune=finetune, lr=0.01, lora_lr_scale=5.0)
        policy = core.load_training_policy(cfg)
        opt, _ = core.make_optimizer(policy.model, cfg)
        assert opt.param_groups[0]["lr"] == pytest.approx(lr)


def test_grpo_advantages_and_clipping_on_a_hand_built_group(tmp_path):
    cfg = cfg_for(tmp_path, algo="grpo", eps_low=0.2, eps_high=0.28)
    policy, sb = step_batch(cfg, [1, 0, 0, 0, 1, 1, 1, 1])
    algo = GRPO(cfg, policy, [])
    algo.prepare(sb)
    assert sb.extra["adv"].tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0])
    assert sb.active.tolist() == [True] * 4 + [False] * 4  # zero advantage: no forward
    # pretend the rollout policy gave sample 0 a much lower probability: ratio > 1 + eps_high
    sb.logp_old[0] = sb.logp_old[0] - 1.0
    rows = torch.arange(4)
    norm = loss_normalizer(sb.student.loss_mask, "token-mean")
    loss, stats = algo.micro_loss(policy.model, sb, rows, norm)
    n0 = int(sb.student.loss_mask[0].sum())
    n_all = int(sb.student.loss_mask[:4].sum())
    assert float(stats["train/clip_frac"].mean()) == pytest.approx(n0 / n_all, abs=1e-6)
    # clipped tokens of sample 0 contribute -A (1 + eps_high); the rest -A * ratio(~1)
    expected = (-0.75 * 1.28 * n0 + 0.25 * (n_all - n0)) / int(sb.student.loss_mask.sum())
    assert float(loss) == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.7])
def test_first_update_ratio_is_one_at_the_rollout_temperature(tmp_path, temperature):
    # the sampler records log softmax(logits / T); the loss must score the same
    # distribution, or the ratio starts away from 1 and clipping bites before any update
    cfg = cfg_for(tmp_path, algo="grpo", dtype="fp64", temperature=temperature)
    policy, sb = step_batch(cfg, [1, 0, 1, 0, 1, 0, 1, 0])
    algo = GRPO(cfg, policy, [])
    algo.prepare(sb)
    norm = loss_normalizer(sb.student.loss_mask, "token-mean")
    _, stats = algo.micro_loss(policy.model, sb, torch.arange(8), norm)
    assert float(stats["train/ratio_mean"].mean()) == pytest.approx(1.0, abs=1e-6)
    assert float(stats["train/clip_frac"].sum()) == 0.0


SRPO = {"route": "outcome", "teacher_entropy_weight": 1.0, "teacher": "trust-region"}


@pytest.mark.parametrize(
    "algo, extra",
    [
        ("sdpo", {}),
        ("grpo", {}),
        ("sdpo", SRPO),
        ("sdpo", {"distillation_weight": 0.5, "variance_weight": True, "demo_prefix": 0.5}),
    ],
)
def test_metrics_rows_carry_exactly_the_documented_keys(tmp_path, monkeypatch, algo, extra):
    monkeypatch.setattr(onpolicy, "grade_response", parity_grader)
    cfg = cfg_for(tmp_path, algo=algo, steps=1, **extra)
    from sdlib.train import train

    run = train(cfg)
    rows = run.read("metrics.jsonl")
    assert len(rows) == 1 and list(rows[0]) == expected_keys(algo, cfg)
    assert all(isinstance(v, int | float) or v is None for v in rows[0].values())
    assert (run.path / "checkpoints" / "step_1" / "adapter").is_dir()


@pytest.mark.parametrize(
    "algo, extra",
    [
        ("sdpo", {}),
        ("grpo", {}),
        ("sdpo", {"finetune": "full", "teacher": "ema", "dtype": "bf16", "lr": 1e-4}),
        ("sdpo", {**SRPO, "variance_weight": True}),
        pytest.param("sdpo", {"load_in_4bit": True}, marks=NEEDS_4BIT),
    ],
)
def test_kill_and_resume_reproduces_the_uninterrupted_run(tmp_path, monkeypatch, algo, extra):
    from sdlib.train import train

    monkeypatch.setattr(onpolicy, "grade_response", parity_grader)
    whole = cfg_for(tmp_path / "a", algo=algo, steps=3, **extra)
    train(whole)

    part = cfg_for(tmp_path / "b", algo=algo, steps=3, **extra)
    calls = {"n": 0}
    real_step = loop.one_step

    def dying_step(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed during step 2")
        return real_step(*args, **kw)

    monkeypatch.setattr(loop, "one_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train(part)
    monkeypatch.setattr(loop, "one_step", real_step)
    train(part)  # resumes from checkpoint step_2

    drop = {"time/rollout", "time/update", "time/step", "time/teacher"}

    def read(p):
        lines = (p / "run" / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if k not in drop} for x in lines]

    a, b = read(tmp_path / "a"), read(tmp_path / "b")
    assert [r["step"] for r in b] == [0, 1, 2]
    assert json.dumps(a) == json.dumps(b)
    sa, _ = RunFolder(tmp_path / "a/run").load_checkpoint(tmp_path / "a/run/checkpoints/step_3")
    sb, _ = RunFolder(tmp_path / "b/run").load_checkpoint(tmp_path / "b/run/checkpoints/step_3")
    assert sa.keys() == sb.keys() and any(k.startswith(".trainable.") for k in sa)
    for n in sa:
        assert torch.equal(sa[n], sb[n]), n
    if extra.get("finetune") == "full":  # every weight, its float32 master, the EMA copy
        assert any(k.startswith(".masters.") for k in sa)
        assert sum(k.startswith(".trainable.") for k in sa) == len(
            list(core.load_training_policy(whole).model.parameters())
        )
        assert (tmp_path / "b/run/checkpoints/step_3/model/model.safetensors").is_file()
    if extra.get("load_in_4bit"):  # the run trained an adapter over quantized projections
        from bitsandbytes.nn import Linear4bit

        model = core.load_training_policy(whole).model
        assert sum(isinstance(m, Linear4bit) for m in model.modules()) == 2 * len(LLAMA_LINEAR)
        assert all(".lora_" in k for k in sa if k.startswith(".trainable."))


def test_resume_refuses_other_parameters(tmp_path, monkeypatch):
    from sdlib.config import ConfigError
    from sdlib.train import train

    monkeypatch.setattr(onpolicy, "grade_response", parity_grader)
    train(cfg_for(tmp_path, algo="grpo", steps=1))
    with pytest.raises(ConfigError, match="lr"):
        train(cfg_for(tmp_path, algo="grpo", steps=2, lr=0.5))
    shutil.rmtree(tmp_path / "run")


def test_training_runs_are_keyed_by_the_code_revision(tmp_path, monkeypatch):
    # a run folder trained by code whose arithmetic has since changed is not reused
    import types

    import sdlib.train as train_pkg
    from sdlib.experiments.training import train as run_training

    monkeypatch.setattr(train_pkg, "train", lambda cfg: cfg.out)
    experiment = types.SimpleNamespace(out=str(tmp_path))
    tcfg = cfg_for(tmp_path, algo="grpo")
    first = run_training(experiment, tcfg)
    assert run_training(experiment, tcfg) == first
    assert run_training(experiment, cfg_for(tmp_path, algo="grpo", lr=0.5)) != first
    monkeypatch.setattr(train_pkg, "REVISION", train_pkg.REVISION + 1)
    assert run_training(experiment, tcfg) != first
    # full fine-tuning's runs are keyed by their own revision (the teacher's head fix)
    from sdlib.experiments.training import identity

    assert identity(cfg_for(tmp_path, algo="sdpo", finetune="full"))["revision"] == 7
    assert identity(tcfg)["revision"] == train_pkg.REVISION


@pytest.mark.parametrize("algo", ["sdpo", "grpo", "sft"])
def test_logged_metrics_do_not_depend_on_micro_batching(tmp_path, monkeypatch, algo):
    from sdlib.train import train

    monkeypatch.setattr(onpolicy, "grade_response", parity_grader)
    data = ["synthetic:addition:1:16"]
    if algo == "sft":
        pairs = tmp_path / "pairs.jsonl"
        pairs.write_text("".join(json.dumps({"prompt": f"{i} + 1?", "response": f"{i + 1}"}) + "\n"
                                 for i in range(8)))  # fmt: skip
        data = [str(pairs)]
    rows = {}
    for micro in (1, 8):
        cfg = cfg_for(tmp_path / str(micro), algo=algo, data=data, steps=1, micro_batch=micro,
                      dtype="fp64", prompts_per_update=0)  # fmt: skip
        rows[micro] = train(cfg).read("metrics.jsonl")[0]
    timing = {k for k in rows[1] if k.startswith("time/")}
    assert rows[1].keys() == rows[8].keys()
    for key in rows[1].keys() - timing:
        assert rows[1][key] == pytest.approx(rows[8][key], rel=1e-9, abs=1e-12), key


def test_an_undocumented_or_missing_metric_fails_the_step(tmp_path, monkeypatch):
    from sdlib.metrics import MetricsContractError
    from sdlib.train import train

    monkeypatch.setattr(onpolicy, "grade_response", parity_grader)
    real_row = GRPO.row
    monkeypatch.setattr(GRPO, "row", lambda self, sb: {**real_row(self, sb), "train/new": 1.0})
    with pytest.raises(MetricsContractError, match=r"undocumented \['train/new'\]"):
        train(cfg_for(tmp_path / "extra", algo="grpo", steps=1))

    def without_zero_adv(self, sb):
        row = real_row(self, sb)
        del row["train/zero_adv_frac"]
        return row

    monkeypatch.setattr(GRPO, "row", without_zero_adv)
    with pytest.raises(MetricsContractError, match=r"missing \['train/zero_adv_frac'\]"):
        train(cfg_for(tmp_path / "missing", algo="grpo", steps=1))


def test_config_dependent_metrics_are_absent_not_zero(tmp_path, monkeypatch):
    from sdlib.train import train

    monkeypatch.setattr(onpolicy, "grade_response", parity_grader)
    plain = train(cfg_for(tmp_path / "a", algo="grpo", steps=1, track_kl=False))
    plain = plain.read("metrics.jsonl")[0]
    assert "train/kl_initial" not in plain and "train/dual_clip_frac" not in plain
    kl = train(cfg_for(tmp_path / "b", algo="grpo", steps=1, kl_coef=0.1, dual_clip=3.0))
    row = kl.read("metrics.jsonl")[0]
    assert row["train/kl_initial"] >= 0 and 0 <= row["train/dual_clip_frac"] <= 1


def test_metrics_stream_to_tensorboard_and_wandb(tmp_path, monkeypatch):
    import sys
    import types

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from sdlib.train import trackers, train

    logged = []

    class FakeRun:
        def log(self, values, step):
            logged.append((step, values))

    fake = types.SimpleNamespace(init=lambda **kw: logged.append(("init", kw)) or FakeRun())
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setattr(trackers, "_OPEN", {})
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr(onpolicy, "grade_response", parity_grader)
    run = train(cfg_for(tmp_path, algo="grpo", steps=2, log_to=["tensorboard", "wandb"]))
    rows = run.read("metrics.jsonl")
    events = EventAccumulator(str(run.path / "tensorboard"))
    events.Reload()
    reward = events.Scalars("rollout/reward_mean")
    assert [e.step for e in reward] == [0, 1]
    assert [e.value for e in reward] == pytest.approx([r["rollout/reward_mean"] for r in rows])
    assert logged[0][0] == "init" and os.environ.pop("WANDB_MODE") == "offline"
    assert [step for step, _ in logged[1:]] == [0, 1]
    assert logged[1][1]["train/grad_norm"] == pytest.approx(rows[0]["train/grad_norm"])


@pytest.mark.parametrize("algo_cls, name", [(GRPO, "grpo"), (SDPO, "sdpo")])
def test_token_rollout_correction_recomputes_pi_old_and_weights_the_gap(tmp_path, algo_cls, name):
    from sdlib.train.onpolicy import trainer_log_probs

    cfg = cfg_for(tmp_path, algo=name, dtype="fp64", temperature=0.7, rollout_is="token")
    policy, sb = step_batch(cfg, [0, 1, 1, 0, 1, 0, 0, 1])
    sampler = sb.logp_old.clone()
    trainer_log_probs(policy.model, sb, cfg)
    mask = sb.student.loss_mask
    # an exact sampler: the trainer's pi_old is the sampler's, and no token is reweighted
    assert torch.allclose(sb.logp_old[mask], sampler[mask], atol=1e-9)
    assert torch.allclose(sb.rollout_weight[mask], torch.ones_like(sb.rollout_weight[mask]))
    # a sampler that drifted: pi_old is still the trainer's, the gap is weighted and clipped
    drift = torch.linspace(-1.5, 1.5, int(mask.sum()), dtype=sampler.dtype)  # float32 rows
    sb.logp_old = sampler.clone()
    sb.logp_old[mask] = sampler[mask] + drift
    trainer_log_probs(policy.model, sb, cfg)
    assert torch.allclose(sb.logp_old[mask], sampler[mask], atol=1e-9)
    expected = (-drift).exp().clamp(max=cfg.rollout_is_clip)
    assert torch.allclose(sb.rollout_weight[mask], expected, atol=1e-5)
    # and the loss is each token's loss times its weight
    algo = algo_cls(cfg, policy, [])
    algo.prepare(sb)
    rows = sb.active.nonzero().squeeze(1)
    norm = norm_of(algo, sb)
    weighted, _ = algo.micro_loss(policy.model, sb, rows, norm)
    sb.rollout_weight = torch.ones_like(sb.rollout_weight)
    plain, _ = algo.micro_loss(policy.model, sb, rows, norm)
    assert float(weighted) != pytest.approx(float(plain), rel=1e-6)


def test_a_long_demonstration_loses_its_start_to_fit_the_teacher_prompt(tmp_path):
    from sdlib.prompts import teacher_prompt

    cfg = cfg_for(tmp_path, algo="sdpo", max_teacher_prompt_tokens=60)
    policy, _ = step_batch(cfg, [0] * 8)
    algo = SDPO(cfg, policy, [])
    demo = " ".join(f"step {i}." for i in range(200)) + " So \\boxed{7}."
    fitted = algo.fit_demonstration("What is 3 + 4?", demo)
    tok = policy.tokenizer
    assert len(tok(teacher_prompt("What is 3 + 4?", fitted))["input_ids"]) <= 60
    assert fitted.endswith("So \\boxed{7}.") and len(fitted) < len(demo)
    assert algo.fit_demonstration("What is 3 + 4?", "short \\boxed{7}") == "short \\boxed{7}"


@pytest.mark.parametrize("algo_cls, name", [(SDPO, "sdpo"), (GRPO, "grpo")])
def test_packed_micro_batches_equal_padded_ones_in_loss_and_gradient(tmp_path, algo_cls, name):
    rewards = [0, 1, 1, 0, 1, 0, 0, 1]
    padded = cfg_for(
        tmp_path,
        algo=name,
        packing=False,
        grad_clip=0.0,
        dtype="fp64",
        loss_agg="seq-mean-token-mean",
        kl_coef=0.1 if name == "grpo" else 0.0,
    )
    packed = dataclasses.replace(padded, packing=True)
    policy, sb = step_batch(padded, rewards)
    ro = sb.rollouts
    for i in range(len(ro)):  # responses of different lengths: padding to leave out
        ro.token_ids[i], ro.logprobs[i] = ro.token_ids[i][: 2 + i % 6], ro.logprobs[i][: 2 + i % 6]
    sb = onpolicy.make_step_batch(sb.problems, sb.users, ro, sb.rewards, 2)
    perturb_adapter(policy.model)
    lengths = sb.student.attention_mask.sum(1)
    assert lengths.min() < lengths.max()
    results = []
    for cfg in (padded, packed):
        policy.model.zero_grad(set_to_none=True)
        algo = algo_cls(cfg, policy, [])
        algo.prepare(sb)
        rows = sb.active.nonzero().squeeze(1)
        loss, stats = algo.micro_loss(policy.model, sb, rows, norm_of(algo, sb, cfg.loss_agg))
        loss.backward()
        results.append((float(loss), grads(policy.model), stats))
    (loss_a, grad_a, stats_a), (loss_b, grad_b, stats_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-10)
    for n in grad_a:
        assert torch.allclose(grad_a[n], grad_b[n], rtol=1e-8, atol=1e-12), n
    for k in stats_a:
        assert torch.allclose(stats_a[k], stats_b[k], rtol=1e-8, atol=1e-12), k


def test_packed_sft_equals_padded(tmp_path, monkeypatch):
    from sdlib.train import train

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"{i} + 1?", "response": "x " * (i + 1)}) + "\n"
                             for i in range(8)))  # fmt: skip
    rows = {}
    for packing in (False, True):
        cfg = cfg_for(tmp_path / str(packing), algo="sft", data=[str(pairs)], steps=2,
                      dtype="fp64", packing=packing, micro_batch=3)  # fmt: skip
        rows[packing] = train(cfg).read("metrics.jsonl")
    for a, b in zip(rows[False], rows[True], strict=True):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-10)
        assert a["train/grad_norm"] == pytest.approx(b["train/grad_norm"], rel=1e-8)


def test_both_algorithms_log_how_far_they_moved(tmp_path, monkeypatch):
    from sdlib.train import train

    monkeypatch.setattr(onpolicy, "grade_response", parity_grader)
    for algo in ("grpo", "sdpo"):
        rows = train(cfg_for(tmp_path / algo, algo=algo, steps=2, lr=0.05)).read("metrics.jsonl")
        # step 0 rolls out from the initial policy and updates once: KL starts near 0 ...
        assert 0 <= rows[0]["train/kl_initial"] < 1e-3, algo
        # ... and after the first update the policy has moved
        assert rows[1]["train/kl_initial"] > rows[0]["train/kl_initial"], algo
