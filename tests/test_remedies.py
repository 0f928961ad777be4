"""The remedies of notebook 07 against float64 brute force and their closed forms: the
trust-region teacher (in test_train's reference test), the GRPO/distillation mix, routing
by outcome, per-question variance weights, teacher-entropy weights, the partial context."""

import math

import pytest
import torch
from test_train import (
    SMOKE,
    both_gradients,
    cfg_for,
    norm_of,
    perturb_adapter,
    reference_sdpo_terms,
    step_batch,
)

from sdlib.config import TrainConfig, from_dict
from sdlib.experiments import training
from sdlib.models import initial_policy
from sdlib.prompts import chat
from sdlib.runfolder import RunFolder
from sdlib.schema import ConfigError, save
from sdlib.train import core, loop
from sdlib.train.grpo import GRPO
from sdlib.train.loop import TRAIN_ADDED
from sdlib.train.sdpo import SDPO, choose_demonstrations, mean_one, question_weights

MIXED = [0, 1, 1, 0, 1, 0, 0, 0]  # group 0: two right of four; group 1: one right


def fp64(tmp_path, **kw):
    return cfg_for(tmp_path, **{"algo": "sdpo", "dtype": "fp64", "grad_clip": 0.0, **kw})


def reference_grpo_terms(model, sb, eps_low=0.2, eps_high=0.28):
    """Float64 brute force of GRPO's per-token clipped surrogate: {sample: [l_t]}, pi_old
    as the step batch holds it (float32)."""
    rewards, group = sb.rewards.double(), sb.group
    terms = {}
    for i, resp in enumerate(sb.rollouts.token_ids):
        adv = float(rewards[i] - rewards[group == group[i]].mean())
        s_ids = sb.rollouts.prompt_ids[i]
        with torch.no_grad():
            s = model(torch.tensor([s_ids + resp])).logits[0].double().log_softmax(-1)
        terms[i] = []
        for pos, token in enumerate(resp):
            old = float(sb.logp_old[i][sb.student.loss_mask[i]][pos])
            ratio = math.exp(s[len(s_ids) - 1 + pos, token].item() - old)
            clipped = min(max(ratio, 1 - eps_low), 1 + eps_high)
            terms[i].append(max(-adv * ratio, -adv * clipped))
    return terms


def loss_of(cfg, policy, sb, algo_cls=SDPO):
    algo = algo_cls(cfg, policy, [])
    algo.prepare(sb)
    loss, _ = algo.micro_loss(policy.model, sb, sb.active.nonzero().squeeze(1), norm_of(algo, sb))
    return float(loss.detach()), algo


@pytest.mark.parametrize("weight, pure", [(0.0, GRPO), (1.0, SDPO)])
def test_distillation_weight_0_and_1_are_grpo_and_sdpo_exactly(tmp_path, weight, pure):
    cfg = fp64(tmp_path, distillation_weight=weight)
    pure_cfg = fp64(tmp_path, algo=pure.__name__.lower())
    policy, sb = step_batch(cfg, MIXED)
    perturb_adapter(policy.model)
    mixed, alone = both_gradients(policy, sb, (cfg, SDPO), (pure_cfg, pure))
    for name in mixed:
        assert torch.equal(mixed[name], alone[name]), name


def test_a_mixed_weight_is_the_weighted_sum_of_the_two_token_means(tmp_path):
    cfg = fp64(tmp_path, distillation_weight=0.3)
    policy, sb = step_batch(cfg, MIXED)
    perturb_adapter(policy.model)
    loss, algo = loss_of(cfg, policy, sb)
    tok = policy.tokenizer
    distill = reference_sdpo_terms(policy.model, tok, sb, 0.5, cfg.topk, cfg.is_clip)
    policy_terms = reference_grpo_terms(policy.model, sb)
    mean = lambda terms: sum(map(sum, terms.values())) / sum(map(len, terms.values()))  # noqa: E731
    assert loss == pytest.approx(0.7 * mean(policy_terms) + 0.3 * mean(distill), rel=1e-9)
    assert sb.active.all()  # every sample has a GRPO advantage or a demonstration here


def test_routing_by_outcome_distils_the_wrong_rollouts_that_have_a_right_sibling(tmp_path):
    cfg = fp64(tmp_path, route="outcome")
    policy, sb = step_batch(cfg, MIXED)
    perturb_adapter(policy.model)
    loss, algo = loss_of(cfg, policy, sb)
    routed = sb.extra["mix"].distill.bool().tolist()
    # wrong with a right sibling: 0, 3 (group 0) and 5, 6, 7 (group 1); sample 4 is group
    # 1's only right rollout: it has no other right sibling and takes GRPO's update
    assert routed == [True, False, False, True, False, True, True, True]
    tok = policy.tokenizer
    distill = reference_sdpo_terms(policy.model, tok, sb, 0.5, cfg.topk, cfg.is_clip)
    policy_terms = reference_grpo_terms(policy.model, sb)
    total = sum(sum(distill[i] if routed[i] else policy_terms[i]) for i in range(8))
    tokens = sum(len(policy_terms[i]) for i in range(8))  # one token-mean over every token
    assert loss == pytest.approx(total / tokens, rel=1e-9)


def test_routing_on_all_right_or_all_wrong_groups_is_grpo(tmp_path):
    # an entropy bonus gives every sample a loss, so GRPO's update is not just zero here
    cfg = fp64(tmp_path, route="outcome", entropy_coef=0.1)
    policy, sb = step_batch(cfg, [1, 1, 1, 1, 0, 0, 0, 0])
    perturb_adapter(policy.model)
    grpo = fp64(tmp_path, algo="grpo", entropy_coef=0.1)
    sdpo = fp64(tmp_path, entropy_coef=0.1)
    routed, alone, distilled = both_gradients(policy, sb, (cfg, SDPO), (grpo, GRPO), (sdpo, SDPO))
    for name in routed:
        assert torch.equal(routed[name], alone[name]), name
    # SDPO distils group 0 (its rollouts teach each other): routing is what made the difference
    assert any(not torch.allclose(distilled[n], routed[n]) for n in routed)


def test_outcome_routing_needs_the_whole_distillation_weight():
    with pytest.raises(ConfigError, match="distillation_weight"):
        from_dict(TrainConfig, {**SMOKE, "route": "outcome", "distillation_weight": 0.5})
    with pytest.raises(ConfigError, match="demo_prefix"):
        from_dict(TrainConfig, {**SMOKE, "demo_prefix": 0.0})


def test_question_weights_are_the_reward_std_and_vanish_where_the_group_agrees(tmp_path):
    cfg = fp64(tmp_path)
    _, sb = step_batch(cfg, [0, 0, 0, 0, 1, 1, 1, 1])
    assert question_weights(sb, 0.5).tolist() == [0.0] * 8  # p = 0 and p = 1
    sb.rewards = torch.tensor([1.0, 0, 0, 0, 1, 1, 0, 0])  # p = 1/4 and 1/2
    expected = [math.sqrt(3) / 4] * 4 + [0.5] * 4
    assert question_weights(sb, 0.5).double().tolist() == pytest.approx(expected, rel=1e-7)
    where = torch.tensor([True, True, False, False, True, False, False, False])
    scaled = mean_one(torch.tensor(expected), where, loop.SINGLE)
    mean = (2 * math.sqrt(3) / 4 + 0.5) / 3
    assert scaled.tolist() == pytest.approx(
        [math.sqrt(3) / 4 / mean] * 2 + [0, 0, 0.5 / mean, 0, 0, 0], rel=1e-6
    )
    assert mean_one(torch.zeros(8), where, loop.SINGLE).tolist() == [0.0] * 8


def test_variance_weights_scale_each_questions_distillation(tmp_path):
    cfg = fp64(tmp_path, variance_weight=True)
    rewards = [1, 1, 1, 1, 1, 0, 0, 1]  # group 0 all right (p = 1), group 1 p = 1/2
    policy, sb = step_batch(cfg, rewards)
    perturb_adapter(policy.model)
    loss, _ = loss_of(cfg, policy, sb)
    # group 0's samples still have demonstrations, but weight 0; group 1 carries the loss
    assert sb.active.tolist() == [False] * 4 + [True] * 4
    terms = reference_sdpo_terms(policy.model, policy.tokenizer, sb, 0.5, cfg.topk, cfg.is_clip)
    taught = sorted(terms)
    assert taught == list(range(8))
    mean_weight = (4 * 0.0 + 4 * 0.5) / 8  # over the samples with a demonstration
    tokens = sum(len(terms[i]) for i in taught)
    expected = sum(0.5 / mean_weight * sum(terms[i]) for i in range(4, 8)) / tokens
    assert loss == pytest.approx(expected, rel=1e-9)


def test_teacher_entropy_weights_match_the_full_distribution(tmp_path):
    cfg = fp64(tmp_path, route="outcome", teacher_entropy_weight=0.7)
    policy, sb = step_batch(cfg, MIXED)
    perturb_adapter(policy.model)
    algo = SDPO(cfg, policy, [])
    algo.prepare(sb)
    algo.entropy_weights(sb)
    weights = sb.extra["token_weight"]
    routed = sb.extra["mix"].distill.bool()
    entropies = {}
    demos = choose_demonstrations(sb.rewards, sb.group, 0.5, True)
    tok = policy.tokenizer
    for i in routed.nonzero().squeeze(1).tolist():
        user = sb.users[sb.rollouts.prompt_index[i]]
        text = f"{user}\nCorrect solution:\n\n{sb.rollouts.text[demos[i]]}\n\n"
        text += "Correctly solve the original question."
        t_ids = tok(chat(tok, text), add_special_tokens=False)["input_ids"]
        resp = sb.rollouts.token_ids[i]
        with torch.no_grad(), initial_policy(policy.model):
            t = policy.model(torch.tensor([t_ids + resp])).logits[0].double().log_softmax(-1)
        t = t[len(t_ids) - 1 : len(t_ids) - 1 + len(resp)]
        entropies[i] = (-(t.exp() * t).sum(-1)).tolist()
    raw = {i: [math.exp(-0.7 * h) for h in hs] for i, hs in entropies.items()}
    mean = sum(map(sum, raw.values())) / sum(map(len, raw.values()))
    mask = sb.student.loss_mask
    for i in range(8):
        got = weights[i][mask[i]].double().tolist()
        want = [w / mean for w in raw[i]] if i in raw else [1.0] * len(got)
        assert got == pytest.approx(want, rel=1e-5), i
    flat = [h for hs in entropies.values() for h in hs]
    assert algo.teacher_entropy == pytest.approx(sum(flat) / len(flat), rel=1e-9)


def test_the_partial_context_teacher_sees_the_first_share_of_the_demonstration(tmp_path):
    cfg = fp64(tmp_path, demo_prefix=0.5, max_new_tokens=16)
    policy, sb = step_batch(cfg, MIXED)
    perturb_adapter(policy.model)
    tok = policy.tokenizer
    loss, _ = loss_of(cfg, policy, sb)
    chosen = choose_demonstrations(sb.rewards, sb.group, 0.5, True)
    demos = []
    for d in chosen:
        if d is None:
            demos.append(None)
            continue
        ids = tok(sb.rollouts.text[d], add_special_tokens=False)["input_ids"]
        assert len(ids) > 2  # so that half of it is less than all of it
        demos.append(tok.decode(ids[: math.ceil(len(ids) / 2)]))
    terms = reference_sdpo_terms(policy.model, tok, sb, 0.5, cfg.topk, cfg.is_clip, demos=demos)
    expected = sum(map(sum, terms.values())) / sum(map(len, terms.values()))
    assert loss == pytest.approx(expected, rel=1e-9)
    whole, _ = loss_of(fp64(tmp_path, max_new_tokens=16), policy, sb)
    assert whole != pytest.approx(loss, rel=1e-6)


def test_runs_made_before_the_remedies_keep_their_key_and_resume(tmp_path):
    cfg = cfg_for(tmp_path, algo="sdpo")
    identity = training.identity(cfg)
    assert not set(TRAIN_ADDED) & set(identity)  # at their defaults: not in the key
    changed = training.identity(cfg_for(tmp_path, algo="sdpo", distillation_weight=0.5))
    assert changed["distillation_weight"] == 0.5
    # a run folder written before the fields existed: its params.yaml lacks them
    run = RunFolder(tmp_path / "old")
    save(cfg, run.file("params.yaml"))
    text = run.file("params.yaml").read_text()
    old = "\n".join(line for line in text.splitlines() if line.split(":")[0] not in TRAIN_ADDED)
    run.file("params.yaml").write_text(old + "\n")
    run.append("metrics.jsonl", [{"step": 0}])
    loop.check_params(run, cfg)  # the same run: resumes
    with pytest.raises(ConfigError, match="distillation_weight"):
        run.file("params.yaml").write_text(old + "\n")
        loop.check_params(run, cfg_for(tmp_path, algo="sdpo", distillation_weight=0.5))


def test_the_trust_region_teacher_keeps_the_initial_weights_under_full_finetuning(tmp_path):
    # nothing else reads the initial policy here (no KL tracked): the teacher must keep it
    cfg = fp64(tmp_path, teacher="trust-region", finetune="full", track_kl=False)
    assert core.reads_initial(cfg)
    policy, sb = step_batch(cfg, MIXED)
    loss, _ = loss_of(cfg, policy, sb)
    assert math.isfinite(loss) and loss > 0


def bench_row(acc, acc_lo, acc_hi, eff, eff_lo, eff_hi):
    return {"Δaccuracy": acc, "Δaccuracy_lo": acc_lo, "Δaccuracy_hi": acc_hi, "seeds": 3,
            "correct per 1k tokens": eff, "correct per 1k tokens_lo": eff_lo,
            "correct per 1k tokens_hi": eff_hi}  # fmt: skip


def test_verdicts_follow_the_rules_fixed_before_the_runs():
    import pandas as pd

    from sdlib.experiments import remedies

    rows = {
        "GRPO": bench_row(0.07, 0.01, 0.14, 5.95, 5.93, 5.97),
        "SDPO": bench_row(-0.48, -0.55, -0.41, 6.40, 6.31, 6.47),
        "keeps both": bench_row(-0.04, -0.10, 0.02, 6.18, 6.10, 6.25),
        "keeps neither": bench_row(-0.05, -0.10, -0.01, 6.00, 5.90, 6.10),
    }
    said = remedies.verdicts({"bench": pd.DataFrame.from_dict(rows, orient="index")})
    assert "GRPO" not in said
    assert said["SDPO"] == (
        "loses held-out accuracy, its efficiency above GRPO's beyond noise (the gain to keep)"
    )
    # (6.18 - 5.95) / (6.40 - 5.95) = 51% of SDPO's gain; an interval reaching 0 keeps
    assert said["keeps both"] == (
        "keeps held-out accuracy, keeps the efficiency (51% of SDPO's gain over GRPO)"
    )
    assert said["keeps neither"].startswith("loses held-out accuracy, does not keep")
    rows["SDPO"] = bench_row(-0.48, -0.55, -0.41, 5.96, 5.90, 6.00)  # no gain over GRPO
    said = remedies.verdicts({"bench": pd.DataFrame.from_dict(rows, orient="index")})
    assert said["keeps both"].endswith("no gain to keep)")
