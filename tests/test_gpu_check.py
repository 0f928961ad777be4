"""The GPU check's dry run on the CPU (what CI can run of it) and the wheelhouse's list."""

import importlib.util
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import wheelhouse  # noqa: E402


def test_the_cpu_dry_run_passes_every_check_that_needs_no_cuda():
    # notebooks at the smoke preset run elsewhere in the suite; here the head, the updates
    # and full fine-tuning, at small sizes
    cmd = [sys.executable, str(BENCH / "gpu_check.py"), "--device", "cpu", "--quick"]
    done = subprocess.run([*cmd, "--skip", "notebooks"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "pass" in line]
    cases = {tuple(cell.strip() for cell in row.split("|")[1:3]) for row in rows}
    heads = {(c, f"{m}, {d}") for c in ["head"] for m in ("fused", "recomputing")
             for d in ("float32", "bfloat16")}  # fmt: skip
    assert (
        heads <= cases and {("update", "SDPO, fp32, LoRA"), ("update", "GRPO, fp32, LoRA")} <= cases
    )
    assert any(check == "full" for check, _ in cases)
    assert ("fsdp", "SDPO step, 2 processes vs 1") in cases
    four_bit = importlib.util.find_spec("bitsandbytes") is not None
    assert (("update", "SDPO, fp32, LoRA on 4-bit weights") in cases) == four_bit
    n = 8 + four_bit
    assert f"{n} of {n} checks passed" in done.stdout


def test_a_wrong_head_fails_the_check(monkeypatch):
    # the check measures something: a divergence off by 1% fails it
    import gpu_check

    from sdlib.head import Head

    real = Head.distill

    def off(self, *args, **kw):
        d, token, entropy = real(self, *args, **kw)
        return d * 1.01, token, entropy

    monkeypatch.setattr(Head, "distill", off)
    args = type("Args", (), {"device": "cpu", "quick": True})()
    rows = gpu_check.check_head(args)
    assert rows and not any(r.ok for r in rows)


def test_the_wheelhouse_holds_what_the_gpu_image_lacks_and_nothing_it_has():
    wanted = wheelhouse.wanted()
    for name in ("pandas", "seaborn", "papermill", "ipykernel", "mistune", "math-verify"):
        assert name in wanted, name
    for name in ("torch", "transformers", "peft", "accelerate", "numpy", "datasets", "pyarrow"):
        assert name not in wanted, name
