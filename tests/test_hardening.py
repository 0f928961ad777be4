"""What a run folder guarantees (sdlib.runfolder) and what bad parameters get: nothing read
from disk is unpickled, one writer at a time, no duplicated rows, damaged files are named
and their work redone, and every bad value is one line before anything loads or is written.
"""

import math
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sdlib import cli
from sdlib.config import TrainConfig, from_dict
from sdlib.grading import Grade
from sdlib.runfolder import RunFolder, RunFolderBusy
from sdlib.train import loop, onpolicy, train

SMOKE = dict(
    algo="grpo",
    model="tiny-random:2x64",
    data=["synthetic:addition:1:16"],
    steps=4,
    prompts_per_step=2,
    rollouts_per_prompt=4,
    max_new_tokens=8,
    save_every=2,
    lr=1e-2,
    lora_r=4,
)
TIMING = {"time/rollout", "time/update", "time/step", "time/teacher"}


def parity_grader(text, gold, rules="careful"):
    return Grade(len(text) % 2 == 0, "exact")


@pytest.fixture
def graded(monkeypatch):
    monkeypatch.setattr(onpolicy, "grade_response", parity_grader)


def cfg_for(path, **kw):
    return from_dict(TrainConfig, {**SMOKE, "out": str(path), **kw})


def rows(path, name="metrics.jsonl"):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in RunFolder(path).read(name)]


def weights(path, step):
    state = load_file(Path(path) / "checkpoints" / f"step_{step}" / "state.safetensors")
    return {k: v for k, v in state.items() if k.startswith(".trainable.")}


def assert_same_run(a, b, step):
    assert rows(a) == rows(b)
    assert rows(a, "samples.jsonl") == rows(b, "samples.jsonl")
    wa, wb = weights(a, step), weights(b, step)
    assert wa.keys() == wb.keys() and wa
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The uninterrupted smoke run every interrupted one is compared with."""
    out = tmp_path_factory.mktemp("whole") / "run"
    mp = pytest.MonkeyPatch()
    mp.setattr(onpolicy, "grade_response", parity_grader)
    train(cfg_for(out))
    mp.undo()
    return out


class Bomb:
    """Unpickling this creates ``path``: what a crafted state.pt in a shared folder does."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_crafted_pickle_in_a_run_folder_is_never_loaded(tmp_path, whole, graded):
    marker = tmp_path / "executed"
    out = tmp_path / "run"
    folder = out / "checkpoints" / "step_2"
    folder.mkdir(parents=True)
    for name in ("state.pt", "state.json", "state.safetensors", "manifest.json"):
        (folder / name).write_bytes(pickle.dumps(Bomb(marker)))
    # rows that make step_2 the checkpoint a resume would pick
    head = (whole / "metrics.jsonl").read_text().splitlines(keepends=True)[:2]
    (out / "metrics.jsonl").write_text("".join(head))
    with pytest.warns(UserWarning, match=r"step_2: no readable manifest.json"):
        train(cfg_for(out))
    assert not marker.exists()
    assert_same_run(out, whole, 4)  # the planted folder was skipped and replaced


def test_a_kill_before_the_first_checkpoint_leaves_no_duplicate_rows(
    tmp_path, whole, graded, monkeypatch
):
    real, calls = loop.one_step, {"n": 0}

    def dying(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # step 0's row is written, no checkpoint exists yet
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(loop, "one_step", dying)
    with pytest.raises(KeyboardInterrupt):
        train(cfg_for(tmp_path))
    assert [r["step"] for r in rows(tmp_path)] == [0]
    monkeypatch.setattr(loop, "one_step", real)
    train(cfg_for(tmp_path))
    assert [r["step"] for r in rows(tmp_path)] == [0, 1, 2, 3]
    assert_same_run(tmp_path, whole, 4)


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path, graded):
    with RunFolder(tmp_path).lock():
        with pytest.raises(RunFolderBusy, match=rf"in use by process {os.getpid()}"):
            train(cfg_for(tmp_path))
        code = "from sdlib.cli import main; raise SystemExit(main())"
        done = subprocess.run(
            [sys.executable, "-c", code, "train", "grpo", "--model", "tiny-random:2x64",
             "--out", str(tmp_path)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 1
        assert f"RunFolderBusy: run folder {tmp_path} is in use by process {os.getpid()}" in (
            done.stderr
        )
    assert not (tmp_path / "metrics.jsonl").exists()


def test_with_wait_for_locks_a_second_writer_waits_for_the_holder(tmp_path, capsys):
    # what two notebooks of `sdlib run --jobs 2` do when both need one shared run
    hold = (
        "import sys, time; from sdlib.runfolder import RunFolder\n"
        "with RunFolder(sys.argv[1]).lock():\n"
        "    print('held', flush=True); time.sleep(2)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    with (
        pytest.raises(RunFolderBusy, match=f"in use by process {holder.pid}"),
        RunFolder(tmp_path).lock(),
    ):
        pass
    os.environ["SDLIB_WAIT_FOR_LOCKS"] = "1"
    start = time.perf_counter()
    try:
        with RunFolder(tmp_path).lock():
            waited = time.perf_counter() - start  # the lock came only once the holder let go
    finally:
        del os.environ["SDLIB_WAIT_FOR_LOCKS"]
        holder.wait()
    assert waited > 1.0
    said = capsys.readouterr().out
    assert f"waiting for process {holder.pid}, which is writing {tmp_path}" in said


def test_a_damaged_checkpoint_falls_back_to_the_intact_one_before_it(tmp_path, whole, graded):
    train(cfg_for(tmp_path))
    state = tmp_path / "checkpoints" / "step_4" / "state.safetensors"
    state.write_bytes(state.read_bytes()[:100])  # truncated
    with pytest.warns(UserWarning, match=r"step_4/state.safetensors has 100 bytes where"):
        train(cfg_for(tmp_path))
    assert_same_run(tmp_path, whole, 4)


def test_a_damaged_final_adapter_is_not_a_finished_run(tmp_path, whole, graded):
    from sdlib.experiments.training import Trained

    cfg = cfg_for(tmp_path)
    train(cfg)
    adapter = tmp_path / "checkpoints" / "step_4" / "adapter" / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:-10])
    unfinished = pytest.raises(FileNotFoundError, match="not finished or its final checkpoint")
    with pytest.warns(UserWarning, match="adapter_model.safetensors has"), unfinished:
        _ = Trained(RunFolder(tmp_path), cfg).weights
    with pytest.warns(UserWarning, match="adapter_model.safetensors has"):
        train(cfg)  # resumes from step 2 and writes step 4 again
    assert Trained(RunFolder(tmp_path), cfg).weights.is_dir()
    assert_same_run(tmp_path, whole, 4)


def test_a_cut_metrics_line_is_named_and_its_step_recomputed(tmp_path, whole, graded):
    train(cfg_for(tmp_path, save_every=1))
    path = tmp_path / "metrics.jsonl"
    text = path.read_text()
    path.write_text(text[: len(text) - 30])  # the last line cut mid-write
    (tmp_path / "done.json").unlink()
    with pytest.warns(UserWarning, match=r"metrics.jsonl: 1 damaged line\(s\) \(first: line 4\)"):
        train(cfg_for(tmp_path, save_every=1))
    assert_same_run(tmp_path, whole, 4)


# ---------------------------------------------------------------------------------------
# Bad parameters: one line naming the value and the fix, before anything loads or is written


BAD = [
    (["train", "grpo", "--config", "{bad_yaml}"], 2, "not valid YAML at line 2"),
    (["train", "grpo", "--device", "cuda"], 2, "device = 'cuda', but this torch"),
    (["train", "grpo", "--data", "{tmp}"], 1, "is a folder"),
    (["train", "grpo", "--set", "data=[]"], 2, "data = []; expected at least one"),
    (["train", "grpo", "--save-every", "0"], 2, "save_every = 0; expected a number in [1"),
    (["train", "grpo", "--temperature", "-1"], 2, "temperature = -1.0"),
    (["train", "grpo", "--top-p", "1.5"], 2, "top_p = 1.5; expected a number in (0, 1]"),
    (["train", "grpo", "--lr", "0"], 2, "lr = 0.0; expected a number in (0, inf)"),
    (["train", "grpo", "--lora-dropout", "1"], 2, "lora_dropout = 1.0"),
    (["train", "sdpo", "--topk", "100000"], 2, "larger than tiny-random:2x64's vocabulary"),
    (["train", "sdpo", "--is-clip", "-1"], 2, "is_clip = -1.0; expected a number in (0, inf)"),
    (["train", "sdpo", "--distill-loss", "sampled-token"], 2, "defined for alpha = 1.0 only"),
    (["train", "sdpo", "--topk", "0"], 2, "topk must be >= 1; for the whole vocabulary"),
    (["train", "grpo", "--max-new-tokens", "100000"], 2, "has a context of 4096 tokens"),
    (["train", "ppo"], 2, "algo = 'ppo'; expected one of ['grpo', 'sdpo', 'sft']"),
    (["eval", "--limit", "-5"], 2, "limit = -5; expected a number in [0"),
    (["eval", "--data", "no-such-set"], 1, "cannot load problems from 'no-such-set'"),
    (["eval", "--data", "organism:all:heldout:abc"], 1, "the count 'abc' is not a whole number"),
    (["eval", "--temperature", "inf"], 2, "temperature = inf is not a finite number"),
    (["train", "grpo", "--lr", "nan"], 2, "lr = nan is not a finite number"),
]

RUN_BAD = [
    (["03", "-p", "eval_data", "[no-such-set]"], 1, "03_sdpo_vs_grpo: cannot load problems"),
    (["05", "-p", "model", "no-such-folder/model"], 1, "05_task_coverage: "),
    (["03", "-p", "eval_k", "[1,"], 2, "not valid YAML"),
    (["03", "--plan", "-p", "no_such_knob", "1"], 2, "no selected notebook has such a parameter"),
    (["03", "--plan", "--mean-response", "-5"], 2, "--mean-response -5.0: give a positive"),
    (["03", "--plan", "--mean-response", "nan"], 2, "--mean-response nan: give a positive"),
]


@pytest.mark.parametrize("argv, code, message", RUN_BAD, ids=[" ".join(b[0]) for b in RUN_BAD])
def test_bad_run_input_is_one_line_before_any_notebook_runs(tmp_path, capsys, argv, code, message):
    out = tmp_path / "run"
    assert cli.main(["run", *argv, "--preset", "smoke", "--out", str(out)]) == code
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_an_interrupt_is_one_line_saying_the_command_resumes(monkeypatch, capsys):
    import sdlib.evaluate

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(sdlib.evaluate, "run_eval", interrupted)
    assert cli.main(["eval"]) == 130
    err = capsys.readouterr().err.strip()
    assert "interrupted" in err and "resumes" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "spec, message",
    [
        ("- extends: smoke\n", "expected a mapping with extends"),
        ("set: {seeds: [0]}\n", "expected a mapping with extends"),
        ("extends: loop\n", "presets extend each other in a circle: loop -> loop"),
        ("extends: smoke\nset: [1]\n", "set must be a mapping"),
    ],
)
def test_a_malformed_derived_preset_is_named(tmp_path, monkeypatch, spec, message):
    from sdlib import config

    (tmp_path / "smoke").symlink_to(config.PARAMS_DIR / "smoke")
    (tmp_path / "loop").mkdir()
    (tmp_path / "loop" / "_preset.yaml").write_text(spec)
    monkeypatch.setattr(config, "PARAMS_DIR", tmp_path)
    with pytest.raises(config.ConfigError, match=message):
        config.preset_values("03_sdpo_vs_grpo", "loop")


@pytest.mark.parametrize("argv, code, message", BAD, ids=[" ".join(b[0][:4]) for b in BAD])
def test_bad_parameters_are_one_line_before_any_work(tmp_path, capsys, argv, code, message):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("lr: [1,\n")
    argv = [a.format(bad_yaml=bad_yaml, tmp=tmp_path) for a in argv]
    out = tmp_path / "run"
    assert cli.main([*argv, "--model", "tiny-random:2x64", "--out", str(out)]) == code
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()  # nothing written: the corrected rerun is not refused


# ---------------------------------------------------------------------------------------
# Killed anywhere with SIGKILL, then resumed: exactly the uninterrupted run


def sdlib_process(args, out) -> subprocess.Popen:
    """``sdlib ARGS`` in a child process whose grader is the parity grader (the random
    model is never right, so the real grader would give every step the same reward)."""
    code = (
        "import sys; from sdlib.grading import Grade; from sdlib.train import onpolicy; "
        "import sdlib.evaluate as ev; "
        "onpolicy.grade_response = ev.grade_response = "
        "lambda t, g, **kw: Grade(len(t) % 2 == 0, 'exact'); "
        "from sdlib.cli import main; raise SystemExit(main(sys.argv[1:]))"
    )
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    argv = [sys.executable, "-c", code, *args, "--out", str(out)]
    # a child inherits an ignored SIGINT, and Python then installs no KeyboardInterrupt
    # handler: start it with the default, as a terminal would
    return subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def kill_when(proc, ready, delay=0.0, timeout=600.0) -> bool:
    """SIGKILL ``proc`` ``delay`` seconds after ``ready()`` first holds; False if it
    finished first."""
    end, fire = time.monotonic() + timeout, None
    while proc.poll() is None and time.monotonic() < end:
        if fire is None and ready():
            fire = time.monotonic() + delay
        if fire is not None and time.monotonic() >= fire:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.02)
    assert proc.returncode == 0, proc.stderr.read()[-3000:]
    return False


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


TRAIN_ARGS = ["train", "grpo", "--model", "tiny-random:2x64", "--data",
              "synthetic:addition:1:16", "--steps", "6", "--prompts-per-step", "2",
              "--rollouts-per-prompt", "4", "--max-new-tokens", "8", "--save-every", "2",
              "--lr", "0.01", "--lora-r", "4"]  # fmt: skip


def test_train_killed_anywhere_resumes_to_the_uninterrupted_run(tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert sdlib_process(TRAIN_ARGS, whole).wait() == 0
    rng = random.Random(7)
    metrics = cut / "metrics.jsonl"
    second = 2 + rng.randrange(2)
    kills = [  # (ready, delay): the moment after ``ready`` holds, seeded
        (lambda: lines(metrics) >= 1, 0.0),  # a row written, no checkpoint yet
        (lambda: lines(metrics) >= second, rng.uniform(0, 1)),  # around the first checkpoint
        (lambda: lines(metrics) >= 4, rng.uniform(0, 2)),  # somewhere later on
    ]
    killed = [kill_when(sdlib_process(TRAIN_ARGS, cut), r, d) for r, d in kills]
    assert killed[0], "the run finished before the first kill"
    assert sdlib_process(TRAIN_ARGS, cut).wait() == 0
    assert_same_run(cut, whole, 6)


EVAL_ARGS = ["eval", "--model", "tiny-random:2x64", "--data", "synthetic:addition:1:24",
             "--k", "2", "--max-new-tokens", "8", "--gen-batch", "4"]  # fmt: skip


def test_eval_killed_anywhere_resumes_to_the_uninterrupted_samples(tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert sdlib_process(EVAL_ARGS, whole).wait() == 0
    rng = random.Random(11)
    samples = cut / "samples.jsonl"
    middle = 10 + rng.randrange(10)
    kills = [(lambda: lines(samples) >= 1, 0.0), (lambda: lines(samples) >= middle, 0.0),
             (lambda: lines(samples) >= 24, rng.uniform(0, 1))]  # fmt: skip
    killed = [kill_when(sdlib_process(EVAL_ARGS, cut), r, d) for r, d in kills]
    assert killed[0], "the evaluation finished before the first kill"
    assert sdlib_process(EVAL_ARGS, cut).wait() == 0

    def texts(path):
        got = RunFolder(path).read("samples.jsonl")
        return sorted((r["problem_id"], r["sample"], r["text"]) for r in got)

    assert texts(cut) == texts(whole) and len(texts(whole)) == 48
    assert (cut / "table.csv").read_text() == (whole / "table.csv").read_text()


def test_run_03_killed_anywhere_resumes_to_the_uninterrupted_tables(tmp_path):
    args = ["run", "03", "--preset", "smoke"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert sdlib_process(args, whole).wait() == 0
    rng = random.Random(3)

    def trained_rows():
        return sum(lines(p) for p in cut.glob("train/*/metrics.jsonl"))

    second = 2 + rng.randrange(2)
    kills = [(lambda: trained_rows() >= 1, 0.0), (lambda: trained_rows() >= second, 0.0),
             (lambda: any(cut.glob("eval/*/samples.jsonl")), rng.uniform(0, 3))]  # fmt: skip
    for ready, delay in kills:
        kill_when(sdlib_process(args, cut), ready, delay)
    assert sdlib_process(args, cut).wait() == 0
    for table in sorted((whole / "03_sdpo_vs_grpo" / "tables").glob("*.csv")):
        assert (cut / "03_sdpo_vs_grpo" / "tables" / table.name).read_text() == table.read_text()
    for run in sorted(whole.glob("train/*")):
        assert rows(cut / "train" / run.name) == rows(run)


def test_an_adapter_saved_as_a_pickle_is_refused(tmp_path):
    from sdlib.models import ModelNotFoundError, load_policy

    marker = tmp_path / "executed"
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.bin").write_bytes(pickle.dumps(Bomb(marker)))
    with pytest.raises(ModelNotFoundError, match="safetensors only"):
        load_policy("tiny-random:2x64", adapter=tmp_path)
    assert not marker.exists()


def test_a_model_folder_without_a_tokenizer_is_one_line_naming_it(tmp_path):
    from sdlib.models import ModelNotFoundError, load_policy, load_tokenizer

    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    for load in (load_tokenizer, load_policy):
        with pytest.raises(ModelNotFoundError, match=r"holds no tokenizer \(none of tokenizer"):
            load(str(tmp_path))


def _damage(path: Path, how: str) -> None:
    lines_ = path.read_text().splitlines(keepends=True)
    middle = len(lines_) // 2
    if how == "garbled":
        lines_[middle] = lines_[middle][: len(lines_[middle]) // 2] + "\n"
    else:  # repeated
        lines_.insert(middle + 1, lines_[middle])
    path.write_text("".join(lines_))


@pytest.mark.parametrize("name", ["metrics.jsonl", "samples.jsonl"])
@pytest.mark.parametrize("how", ["garbled", "repeated"])
def test_a_finished_run_with_a_damaged_row_is_repaired_by_a_rerun(
    tmp_path, whole, graded, name, how
):
    import shutil
    import warnings

    out = tmp_path / "run"
    shutil.copytree(whole, out)
    _damage(out / name, how)
    assert rows(out, name) != rows(whole, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the damaged line is named in a warning
        train(cfg_for(out))
    assert_same_run(out, whole, 4)


def test_a_non_finite_update_stops_the_run_naming_the_step_and_keeps_the_checkpoint(
    tmp_path, graded, monkeypatch
):
    out = tmp_path / "run"
    real = loop.update_phase

    def poisoned(algo, model, batch, opt, sched, cfg, dist=loop.SINGLE):
        if poisoned.calls == 2:  # the third step's update: its gradient turns to NaN
            for p in model.parameters():
                if p.requires_grad:
                    p.register_hook(lambda g: g * float("nan"))
                    break
        poisoned.calls += 1
        return real(algo, model, batch, opt, sched, cfg, dist)

    poisoned.calls = 0
    monkeypatch.setattr(loop, "update_phase", poisoned)
    with pytest.raises(
        loop.NonFiniteUpdate, match=r"grpo step 2: .*not finite|grpo step 2: the loss"
    ):
        train(cfg_for(out))
    assert [r["step"] for r in RunFolder(out).read("metrics.jsonl")] == [0, 1]
    assert RunFolder(out).latest()[0] == 2
    assert all(
        math.isfinite(v)
        for r in RunFolder(out).read("metrics.jsonl")
        for v in r.values()
        if isinstance(v, float)
    )


@pytest.mark.parametrize(
    "args",
    [["--lr", "inf"], ["--lr", "nan"], ["--temperature", "inf"], ["--set", "kl_coef=.nan"]],
)
def test_non_finite_training_values_are_refused_in_one_line(tmp_path, capsys, args):
    code = cli.main(["train", "grpo", "--out", str(tmp_path / "r"), *args])
    err = capsys.readouterr().err
    assert code == 2 and "not a finite number" in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_an_eval_folder_never_serves_another_models_samples(tmp_path, capsys, monkeypatch):
    base = ["eval", "--data", "synthetic:addition:1:4", "--k", "1", "--max-new-tokens", "4"]
    out = str(tmp_path / "e")
    assert cli.main([*base, "--model", "tiny-random:2x64", "--out", out]) == 0
    first = (tmp_path / "e" / "samples.jsonl").read_text()
    import sdlib.models

    monkeypatch.setattr(sdlib.models, "load_policy", lambda *a, **k: pytest.fail("loaded"))
    capsys.readouterr()
    others = (
        ["--model", "tiny-random:1x64"],
        ["--model", "tiny-random:2x64", "--temperature", "0.3"],
    )
    for other in others:
        assert cli.main([*base, *other, "--out", out]) == 2
        err = capsys.readouterr().err
        assert "holds samples of another evaluation" in err and err.count("\n") == 1
    assert (tmp_path / "e" / "samples.jsonl").read_text() == first
    assert "tiny-random:2x64" in (tmp_path / "e" / "params.yaml").read_text()


def test_a_full_disk_at_a_checkpoint_is_one_line_and_the_rerun_resumes(
    tmp_path, whole, graded, monkeypatch
):
    from safetensors import SafetensorError

    import sdlib.runfolder as rf

    out = tmp_path / "run"
    real = rf.save_file

    def full(tensors, path, *a, **k):
        if "step_4" in str(path):
            raise SafetensorError("Error while serializing: No space left on device (os error 28)")
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(rf, "save_file", full)
    with pytest.raises(OSError, match=r"step_4 could not be written .*No space left") as err:
        train(cfg_for(out))
    assert "\n" not in str(err.value)
    assert not list((out / "checkpoints").glob("*.tmp*"))  # nothing half-written is left
    monkeypatch.setattr(rf, "save_file", real)
    train(cfg_for(out))
    assert_same_run(out, whole, 4)


def test_ctrl_c_on_parallel_notebooks_stops_their_kernels_before_the_lock_goes(tmp_path):
    """The kernels run in sessions of their own, out of reach of the terminal's Ctrl-C:
    ``sdlib run --jobs 2`` interrupts them, and releases the run folder's lock only once
    nothing writes to it any more."""
    import fcntl

    proc = sdlib_process(["run", "03", "04", "--preset", "smoke", "--jobs", "2"], tmp_path)
    end = time.monotonic() + 300
    while not any(tmp_path.glob("train/*/metrics.jsonl")) and time.monotonic() < end:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    fd = os.open(tmp_path / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks until sdlib run lets go of the folder
        released = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
        assert proc.wait(timeout=120) == 130
        time.sleep(3)
        after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    finally:
        os.close(fd)
    assert after == released
    assert "interrupted" in proc.stderr.read().lower()


def test_a_label_names_one_folder_directly_under_its_kind(tmp_path):
    from sdlib.experiments import cache

    got = cache.folder(tmp_path, "eval", "SDPO w/o thinking |D|=8", {"k": 1})
    assert got.parent == tmp_path / "eval"  # not eval/SDPO w/
    assert got.name == f"SDPO_w_o_thinking_D_=8-{cache.key({'k': 1})}"
    # a folder a former label made is found by its key whatever it is named
    old = tmp_path / "eval" / f"SDPO EMA 0.05-{cache.key({'k': 2})}"
    old.mkdir(parents=True)
    assert cache.folder(tmp_path, "eval", "SDPO EMA 0.05", {"k": 2}) == old


def test_a_training_set_file_keys_its_run_by_content_not_by_path(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from sdlib.experiments import training

    monkeypatch.setattr(training.trainers, "train", lambda tcfg: tcfg.out)
    cfg = SimpleNamespace(
        out=str(tmp_path), **{k: getattr(TrainConfig(), k) for k in training.SHARED}
    )
    data = tmp_path / "D_sg.jsonl"

    def run_folder(path, text):
        path.write_text(text)
        return training.train(cfg, training.config(cfg, "sft", [str(path)])).run

    first = run_folder(data, '{"id": "a"}\n')
    assert run_folder(data, '{"id": "b"}\n') != first  # rewritten at the same path: a new run
    moved = tmp_path / "moved" / "D_sg.jsonl"  # a run folder moved: the same set elsewhere
    moved.parent.mkdir()
    assert run_folder(moved, '{"id": "a"}\n') == first
