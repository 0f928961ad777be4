"""sdlib's GRPO and SDPO updates against TRL's on one fixed batch (bench/vs_trl.py).

TRL is a bench/dev dependency only (the ``bench`` extra); without it these tests skip.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl", reason="TRL is not installed: pip install -e .[bench]")

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def vs_trl():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("vs_trl", BENCH / "vs_trl.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def checked(vs_trl, tmp_path_factory):
    args = vs_trl.parse_args(["--quick", "--check-dtype", "fp64", "--max-new-tokens", "12"])
    batch = tmp_path_factory.mktemp("batch") / "batch.json"
    vs_trl.make_fixed_batch(args, batch)
    return {r["algo"]: r for r in vs_trl.cross_check(args, batch)}


def test_sdpo_loss_and_gradient_equal_trls(checked):
    r = checked["sdpo"]
    assert r["prompts equal"]  # TRL's own teacher builder, its template set to the paper's
    assert r["TRL loss"] > 0
    assert r["loss rel. diff"] < 1e-8
    assert r["grad rel. diff"] < 1e-8


def test_grpo_loss_and_gradient_equal_trls(checked):
    r = checked["grpo"]
    assert r["prompts equal"]  # TRL's chat rendering of the student prompt = sdlib's
    assert r["TRL grad norm"] > 0
    # TRL's fused LM head returns float32 log-probs whatever the model's dtype, and the
    # loss is a difference of +-A terms that mostly cancel: agreement to float32, not fp64
    assert r["loss rel. diff"] < 1e-4
    assert r["grad rel. diff"] < 1e-6


def test_a_wrong_setting_shows_in_the_check(vs_trl, tmp_path, monkeypatch):
    # the check can fail: SDPO with a different alpha on the sdlib side disagrees
    args = vs_trl.parse_args(["--quick", "--check-dtype", "fp64", "--algos", "sdpo"])
    batch = tmp_path / "batch.json"
    vs_trl.make_fixed_batch(args, batch)
    original = vs_trl.sdlib_config

    def other_alpha(*a, **kw):
        return original(*a, **kw, alpha=0.9)

    monkeypatch.setattr(vs_trl, "sdlib_config", other_alpha)
    (r,) = vs_trl.cross_check(args, batch)
    assert r["loss rel. diff"] > 1e-3
