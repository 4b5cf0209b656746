"""Run-directory ownership and checkpoint trust: one writer per workdir, damaged checkpoints
set aside for the previous good one, write errors and other models stopped in one line."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess

import numpy as np
import pytest

from alphaalign_jax import config as config_lib
from alphaalign_jax import train as train_lib
from alphaalign_jax import warm_start
from alphaalign_jax.checkpoint import MANIFEST, TrainCheckpoints, saved_steps, verify_checkpoint
from alphaalign_jax.models import CheckpointError
from alphaalign_jax.rundir import RunDirLock, RunDirLocked
from tests.tiny_run import make_tiny_policy, read_metrics, write_prompts

@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smollm2_dir):
    root = tmp_path_factory.mktemp("reliability")
    return (make_tiny_policy(root / "policy", smollm2_dir, init_std=1.0),
            write_prompts(root / "train.jsonl"), root)


def tiny_config(tiny, steps: int, policy: pathlib.Path | None = None, algorithm: str = "grpo"):
    c = config_lib.base_config(algorithm)
    c.model.hf_dir = str(policy or tiny[0])
    c.data.train_file = str(tiny[1])
    c.system_prompt = ""
    c.reward.helpfulness = "none"
    c.rollout.update(num_samples=2, max_new_tokens=6, max_prompt_len=192, temperature=1.0)
    c.algo.update(beta=0.0, micro_batch_size=2)
    c.optim.update(learning_rate=1e-3)
    c.train.update(steps=steps, prompts_per_step=2, checkpoint_every=2, plot=False,
                   async_checkpointing=False)
    return c


def metrics(workdir: pathlib.Path) -> list[dict]:
    return read_metrics(workdir, timing=False)


@pytest.fixture(scope="module")
def uninterrupted(tiny):
    workdir = tiny[2] / "full"
    train_lib.Trainer(tiny_config(tiny, 6), workdir).run()
    return metrics(workdir)


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    first = RunDirLock(tmp_path, "trainer").acquire()
    with pytest.raises(RunDirLocked, match=rf"{tmp_path} is in use by trainer pid {os.getpid()} "
                       "on host"):
        RunDirLock(tmp_path, "trainer").acquire()
    first.release()
    RunDirLock(tmp_path, "evaluation").acquire().release()
    # a lock file left by a process that died (no flock held): taken over
    (tmp_path / ".lock").write_text(json.dumps({"role": "trainer", "pid": 999999}))
    RunDirLock(tmp_path, "trainer").acquire().release()


@pytest.mark.assets
@pytest.mark.slow
def test_two_trainers_on_one_workdir(tiny, tmp_path, uninterrupted):
    """Reliability defect 1: the second trainer deleted the first's checkpoint."""
    first = train_lib.Trainer(tiny_config(tiny, 6), tmp_path)
    config_before = (tmp_path / "config.json").read_bytes()
    with pytest.raises(RunDirLocked, match="is in use by trainer"):
        train_lib.Trainer(tiny_config(tiny, 6), tmp_path)
    assert (tmp_path / "config.json").read_bytes() == config_before
    first.run()
    assert metrics(tmp_path) == uninterrupted  # finished, files intact, every step once


@pytest.mark.assets
@pytest.mark.slow
def test_damaged_newest_checkpoint_falls_back_to_the_previous(tiny, tmp_path, uninterrupted,
                                                              caplog):
    """Defect 2: flipped bytes restored silently; a truncated file gave an orbax traceback."""
    train_lib.Trainer(tiny_config(tiny, 4), tmp_path).run()
    checkpoints = tmp_path / "checkpoints"
    assert all((checkpoints / s / MANIFEST).exists() for s in ("2", "4"))
    params = max((checkpoints / "4" / "params").rglob("*"), key=lambda p: p.stat().st_size)
    data = bytearray(params.read_bytes())
    data[len(data) // 2: len(data) // 2 + 16] = bytes(16)  # 16 bytes of the parameters
    params.write_bytes(bytes(data))
    resumed = train_lib.Trainer(tiny_config(tiny, 6), tmp_path)
    assert resumed.restore_latest() and resumed.step == 2
    aside = [p for p in (tmp_path / "checkpoints_set_aside").iterdir() if p.is_dir()]
    assert [p.name.split("-")[0] for p in aside] == ["4"] and (aside[0] / "params").exists()
    note = json.loads((aside[0].parent / f"{aside[0].name}.json").read_text())
    assert note["step"] == 4 and "content (sha256) differs" in note["reason"]
    assert "content (sha256) differs" in caplog.text and "previous good checkpoint" in caplog.text
    resumed.lock.release()
    # the same again without a manifest: the torn file fails to restore and is set aside too
    (checkpoints / "2" / MANIFEST).unlink()
    for f in (checkpoints / "2" / "train_state").rglob("*"):
        if f.is_file():
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    again = train_lib.Trainer(tiny_config(tiny, 6), tmp_path)
    assert not again.restore_latest() and again.step == 0
    again.lock.release()


@pytest.mark.assets
@pytest.mark.slow
def test_resume_after_fallback_equals_an_uninterrupted_run(tiny, tmp_path, uninterrupted):
    train_lib.Trainer(tiny_config(tiny, 4), tmp_path).run()
    (tmp_path / "checkpoints" / "4" / MANIFEST).write_text('{"files": {}}')  # unverifiable
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n")
    train_lib.Trainer(tiny_config(tiny, 6), tmp_path).run()
    assert metrics(tmp_path) == uninterrupted


@pytest.mark.assets
def test_a_failed_checkpoint_write_stops_the_run_in_one_line(tiny, tmp_path, monkeypatch):
    """Defect 7: a full disk surfaced a step late, deep in a long log."""
    trainer = train_lib.Trainer(tiny_config(tiny, 6), tmp_path)
    real_save = trainer.checkpoints.manager.save

    def save(step, *args, **kwargs):
        if step == 4:
            raise OSError(28, "No space left on device")
        return real_save(step, *args, **kwargs)

    monkeypatch.setattr(trainer.checkpoints.manager, "save", save)
    with pytest.raises(train_lib.CheckpointWriteError) as err:
        trainer.run()
    message = str(err.value)
    assert "\n" not in message and "step 4" in message and "No space left" in message
    assert "last good checkpoint is step 2" in message
    resumed = train_lib.Trainer(tiny_config(tiny, 6), tmp_path)
    assert resumed.restore_latest() and resumed.step == 2


@pytest.mark.assets
def test_another_model_is_refused_before_the_workdir_is_touched(tiny, tmp_path, smollm2_dir):
    """Defect 4: a 265-line tree-mismatch error, after config.json was rewritten."""
    train_lib.Trainer(tiny_config(tiny, 2), tmp_path).run()
    before = (tmp_path / "config.json").read_bytes()
    other = make_tiny_policy(tmp_path / "other", smollm2_dir, init_std=1.0)
    cfg = json.loads((other / "config.json").read_text())
    cfg.update(hidden_size=48, intermediate_size=96)
    (other / "config.json").write_text(json.dumps(cfg))
    from safetensors.numpy import save_file  # weights of the new shape

    import transformers

    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.from_pretrained(other))
    save_file({k: v.detach().numpy() for k, v in model.state_dict().items()
               if k != "lm_head.weight"}, other / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"different model .*hidden_size: 32 != 48"):
        train_lib.Trainer(tiny_config(tiny, 4, policy=other), tmp_path)
    assert (tmp_path / "config.json").read_bytes() == before
    assert np.isfinite(metrics(tmp_path)[-1]["loss"])


@pytest.mark.parametrize("override, field", [
    ("reward.rm_batch_size", 0), ("data.seed", -1), ("algo.logprob_chunk", 0)])
def test_values_that_failed_after_compilation_are_config_errors(override, field):
    c = config_lib.base_config()
    section, name = override.split(".")
    c[section][name] = field
    with pytest.raises(config_lib.ConfigValueError, match=rf"config\.{override}: must be >= "):
        config_lib.validate(c)


def run_cli(*args: str, timeout: int = 300):
    import subprocess
    import sys

    from tests.tiny_run import REPO

    return subprocess.run([sys.executable, "-m", "alphaalign_jax.train", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_misspelt_override_is_one_line(tmp_path):
    out = run_cli("--config=configs/smollm2_135m_cpu.py", f"--workdir={tmp_path}",
                  "--config.optim.lr=1")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip() == ("train: config.optim.lr: not a field of the config; the "
                                  "fields are in the config file's get_config() and "
                                  "alphaalign_jax/config.py")


@pytest.mark.assets
@pytest.mark.slow
def test_sigterm_while_loading_exits_cleanly(tiny, tmp_path):
    import signal
    import subprocess
    import time

    from tests.tiny_run import REPO, train_command, tiny_overrides

    proc = subprocess.Popen(train_command(tmp_path, tiny_overrides(tiny[0], tiny[1])), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / ".lock").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # the trainer is loading its models
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert "preempted" in err and not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.assets
def test_checkpoints_name_their_tokenizer_by_absolute_path(tiny, tmp_path, monkeypatch):
    """Defect 5: a relative model.hf_dir was stored as given and resolved later against the
    checkpoint directory."""
    from alphaalign_jax.checkpoint import read_model_config

    monkeypatch.chdir(tiny[0].parent)
    c = tiny_config(tiny, 2)
    c.model.hf_dir = tiny[0].name  # relative to the working directory
    train_lib.Trainer(c, tmp_path).run()
    _, tokenizer_dir = read_model_config(tmp_path / "checkpoints" / "2")
    assert tokenizer_dir == tiny[0].absolute()


@pytest.mark.assets
@pytest.mark.slow
def test_non_finite_loss_names_the_last_verified_checkpoint(tiny, tmp_path):
    """Defect 2: the NaN message named the damaged checkpoint as the latest good one."""
    import jax
    import jax.numpy as jnp

    train_lib.Trainer(tiny_config(tiny, 2), tmp_path).run()
    trainer = train_lib.Trainer(tiny_config(tiny, 4), tmp_path)
    assert trainer.restore_latest()
    trainer.policy.params = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan),
                                         trainer.policy.params)
    with pytest.raises(train_lib.NonFiniteError,
                       match=rf"latest good checkpoint: {tmp_path}/checkpoints/2\)"):
        trainer.train_one_step()


@pytest.mark.assets
def test_user_errors_name_the_file_or_directory(tiny, tmp_path):
    """Defect 8: an empty training file blamed harmful_fraction; a policy directory without
    a tokenizer gave transformers' backend error."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    c = tiny_config(tiny, 2)
    c.data.train_file = str(empty)
    with pytest.raises(config_lib.ConfigValueError, match=rf"{empty} holds no rows"):
        train_lib.Trainer(c, tmp_path / "a")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((tiny[0] / "config.json").read_text())
    with pytest.raises(CheckpointError, match=rf"config.model.hf_dir={bare}: no tokenizer files"):
        train_lib.Trainer(tiny_config(tiny, 2, policy=bare), tmp_path / "b")


def test_evaluate_user_errors_are_one_line(tmp_path, capsys, smollm2_dir):
    from alphaalign_jax import evaluate

    with pytest.raises(SystemExit) as exit_:
        evaluate.main(["--model", "/nonexistent", "--out", str(tmp_path / "a"), "--judge", "none"])
    assert exit_.value.code == 2 and not (tmp_path / "a").exists()
    assert capsys.readouterr().err == ("evaluate: --model=/nonexistent: no such file or "
                                       "directory; a Hugging Face model directory or an orbax "
                                       "checkpoint\n")
    held = RunDirLock(tmp_path / "b", "evaluation").acquire()
    with pytest.raises(SystemExit, match=r"evaluate: .* is in use by evaluation pid"):
        evaluate.main(["--model", str(smollm2_dir), "--out", str(tmp_path / "b"), "--judge",
                       "none", "--max-per-set", "1", "--max-benign", "1", "--probe", ""])
    held.release()


@pytest.mark.assets
def test_a_failed_background_save_stops_the_next_step(tiny, tmp_path, monkeypatch):
    """Defect 7: the asynchronous save's error surfaced only at the next checkpoint; and the
    error named the newest finished checkpoint, not the write that failed."""
    c = tiny_config(tiny, 6)
    c.train.async_checkpointing = True
    trainer = train_lib.Trainer(c, tmp_path)
    real_save = trainer.checkpoints.manager.save
    real_check = trainer.checkpoints.manager.check_for_errors

    def save(step, *args, **kwargs):  # the write of step 4 dies before it is listed
        return True if step == 4 else real_save(step, *args, **kwargs)

    def check():
        if trainer.step == 5:
            raise OSError(28, "No space left on device")
        return real_check()

    monkeypatch.setattr(trainer.checkpoints.manager, "save", save)
    monkeypatch.setattr(trainer.checkpoints.manager, "check_for_errors", check)
    with pytest.raises(train_lib.CheckpointWriteError, match="No space left on device") as err:
        trainer.run()
    assert "checkpoint of step 4 " in str(err.value)
    assert "last good checkpoint is step 2;" in str(err.value)
    written = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in written] == [1, 2, 3, 4]


# -------------------------------------------------------------- round 3 (issue 34), failures 1-6
def snapshot(path: pathlib.Path) -> dict | None:
    """Every file and directory under ``path`` with its bytes: equal before and after means
    nothing was touched."""
    if not path.exists():
        return None
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(path.rglob("*"))}


def params_of(workdir: pathlib.Path, step: int) -> dict:
    import jax

    from alphaalign_jax.checkpoint import load_model, param_dict

    model = load_model(workdir / "checkpoints" / str(step))
    return {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_flatten_with_path(param_dict(model))[0]}


def assert_same_params(a: pathlib.Path, b: pathlib.Path, step: int) -> None:
    pa, pb = params_of(a, step), params_of(b, step)
    assert pa.keys() == pb.keys()
    for name in pa:
        np.testing.assert_array_equal(pa[name], pb[name], err_msg=name)


def damage(checkpoint_dir: pathlib.Path) -> None:
    """Zero 16 bytes in the middle of the largest parameter file."""
    largest = max((p for p in (checkpoint_dir / "params").rglob("*") if p.is_file()),
                  key=lambda p: p.stat().st_size)
    data = bytearray(largest.read_bytes())
    data[len(data) // 2: len(data) // 2 + 16] = bytes(16)
    largest.write_bytes(bytes(data))


def warm_config(tiny, steps: int):
    """The tiny run with a warm start (targets from the labels, no sampling to verify)."""
    c = tiny_config(tiny, steps)
    c.rollout.update(max_new_tokens=64, response_prefix="<safety_reasoning>")
    c.rft.update(rounds=1, targets_from="labels", min_kept=1, epochs=2, learning_rate=1e-2)
    return c


@pytest.fixture(scope="module")
def warm_uninterrupted(tiny):
    workdir = tiny[2] / "warm_full"
    train_lib.Trainer(warm_config(tiny, 2), workdir).run()
    return workdir


@pytest.mark.assets
@pytest.mark.slow
def test_1_sigterm_during_the_warm_start_saves_nothing_and_the_resume_redoes_it(
        tiny, tmp_path, warm_uninterrupted, monkeypatch):
    """Failure 1: a SIGTERM during the warm start dropped its result, then "checkpoint saved"
    was logged with nothing saved. Now the warm start stops at its next batch, nothing claims
    to be saved, and the resume redoes it exactly."""
    trainer = train_lib.Trainer(warm_config(tiny, 2), tmp_path)
    answers = trainer.policy.plain_answers

    def preempted(records, budget):  # the signal arrives in the middle of the warm start
        os.kill(os.getpid(), signal.SIGTERM)
        return answers(records, budget)

    monkeypatch.setattr(trainer.policy, "plain_answers", preempted)
    with pytest.raises(train_lib.Preempted, match="during the RFT warm start: nothing was saved"):
        trainer.run()
    assert saved_steps(tmp_path / "checkpoints") == []
    assert not any((tmp_path / name).exists() for name in ("warm_start", "rft.json"))
    train_lib.Trainer(warm_config(tiny, 2), tmp_path).run()
    assert metrics(tmp_path) == metrics(warm_uninterrupted)
    assert_same_params(tmp_path, warm_uninterrupted, 2)


@pytest.mark.assets
@pytest.mark.slow
def test_1_sigterm_during_the_step_0_save_finishes_it_and_says_so(tiny, tmp_path,
                                                                  warm_uninterrupted,
                                                                  monkeypatch):
    """The other half of failure 1: a SIGTERM while step 0 (the warm start) is being saved.
    The save is finished and sealed before the message says so; the resume reuses it."""
    trainer = train_lib.Trainer(warm_config(tiny, 2), tmp_path)
    save = trainer.checkpoints.save

    def preempted(step, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return save(step, *args, **kwargs)

    monkeypatch.setattr(trainer.checkpoints, "save", preempted)
    with pytest.raises(train_lib.Preempted,
                       match=rf"the newest checkpoint, {tmp_path}/checkpoints/0, is saved"):
        trainer.run()
    verify_checkpoint(tmp_path / "checkpoints" / "0", "step 0")  # sealed and intact
    verify_checkpoint(tmp_path / "warm_start", "the warm start")
    calls = []
    monkeypatch.setattr(warm_start, "warm_start", lambda *args: calls.append(1))
    train_lib.Trainer(warm_config(tiny, 2), tmp_path).run()
    assert calls == [] and metrics(tmp_path) == metrics(warm_uninterrupted)
    assert_same_params(tmp_path, warm_uninterrupted, 2)


@pytest.mark.assets
@pytest.mark.slow
def test_2_an_unsealed_damaged_checkpoint_is_set_aside_never_restored_or_sealed(
        tiny, tmp_path, uninterrupted, caplog):
    """Failure 2: with its manifest removed and a parameter file damaged, the newest checkpoint
    was restored silently and sealed later. Nothing vouches for it: set aside, the run resumes
    from the newest verified one, saying so in one line."""
    train_lib.Trainer(tiny_config(tiny, 4), tmp_path).run()
    newest = tmp_path / "checkpoints" / "4"
    (newest / MANIFEST).unlink()
    damage(newest)
    train_lib.Trainer(tiny_config(tiny, 6), tmp_path).run()
    assert metrics(tmp_path) == metrics(tiny[2] / "full")  # resumed exactly from step 2
    aside = [p for p in (tmp_path / "checkpoints_set_aside").iterdir() if p.is_dir()]
    assert [p.name.split("-")[0] for p in aside] == ["4"]
    assert not (aside[0] / MANIFEST).exists()  # never sealed afterwards
    note = json.loads((aside[0].parent / f"{aside[0].name}.json").read_text())
    assert f"no {MANIFEST}" in note["reason"]
    resumed = [r.getMessage() for r in caplog.records if "resumed from" in r.getMessage()]
    assert len(resumed) == 1 and "\n" not in resumed[0]
    assert f"previous good checkpoint {tmp_path}/checkpoints/2 (step 2) instead of step 4" \
        in resumed[0]
    for step in (4, 6):  # written again, sealed
        verify_checkpoint(tmp_path / "checkpoints" / str(step), "checkpoint")
    assert_same_params(tmp_path, tiny[2] / "full", 6)


@pytest.mark.assets
@pytest.mark.parametrize("kind", ["set aside", "unsealed", "damaged"])
def test_3_evaluate_and_export_refuse_an_unverified_checkpoint(tiny, tmp_path, uninterrupted,
                                                               capsys, kind):
    """Failure 3: evaluate and export read a set-aside or damaged checkpoint and exited 0 (the
    export held NaN weights). Both verify first and refuse in one line, exit 2, naming the
    check, with nothing written."""
    import shutil

    from alphaalign_jax import evaluate
    from tools import convert_checkpoint

    source = tiny[2] / "full" / "checkpoints" / "2"
    if kind == "set aside":
        ckpt = tmp_path / "run" / "checkpoints_set_aside" / "2-20260101-000000"
        shutil.copytree(source, ckpt)
        (ckpt.parent / f"{ckpt.name}.json").write_text(json.dumps(
            {"step": 2, "reason": "fails verification: params/x: content (sha256) differs"}))
        check = "set aside by the trainer (fails verification"
    else:
        ckpt = shutil.copytree(source, tmp_path / "run" / "checkpoints" / "2")
        if kind == "unsealed":
            (ckpt / MANIFEST).unlink()
            check = f"unsealed (no {MANIFEST})"
        else:
            damage(ckpt)
            check = "fails verification (params/"
    for tool, argv in (
            (evaluate.main, ["--model", str(ckpt), "--out", str(tmp_path / "eval"),
                             "--judge", "none"]),
            (convert_checkpoint.main, ["orbax-to-hf", str(ckpt), str(tmp_path / "hf")])):
        with pytest.raises(SystemExit) as exit_:
            tool(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.count("\n") == 1, err
        assert check in err and str(ckpt) in err
    assert not (tmp_path / "eval").exists() and not (tmp_path / "hf").exists()


@pytest.mark.assets
@pytest.mark.slow
def test_4_a_torn_metrics_line_and_later_steps_are_kept_aside_on_resume(tiny, tmp_path,
                                                                        uninterrupted):
    """Failure 4: a torn last line in metrics.jsonl (a full disk mid-write) crashed every
    later resume. The lines up to the checkpoint's step are kept, the torn one and those of
    later steps go to metrics.jsonl.dropped, and the run goes on."""
    train_lib.Trainer(tiny_config(tiny, 4), tmp_path).run()
    (tmp_path / "checkpoints" / "4" / MANIFEST).unlink()  # resumed from 2: steps 3, 4 redone
    path = tmp_path / "metrics.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines) + "\n" + lines[-1][:25])  # cut short mid-write
    train_lib.Trainer(tiny_config(tiny, 6), tmp_path).run()
    assert metrics(tmp_path) == uninterrupted
    assert (tmp_path / "metrics.jsonl.dropped").read_text().splitlines() == (
        lines[2:] + [lines[-1][:25]])


def fill_disk(directory: pathlib.Path, leave: int) -> None:
    """Take all but ``leave`` bytes of the file system ``directory`` is on."""
    st = os.statvfs(directory)
    with open(directory / "filler", "wb") as f:
        f.write(bytes(max(st.f_bavail * st.f_frsize - leave, 0)))


@pytest.mark.assets
# orbax's background writer, failed, leaves an asyncio callback for a loop already closed
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.slow
def test_4_a_full_disk_during_a_checkpoint_write_leaves_the_last_one_intact(
        tiny, tmp_path, uninterrupted, monkeypatch):
    """The other half of failure 4, on a real full disk (a small tmpfs): the write of
    checkpoint 4 fails for want of space. The run stops in one line saying the disk is full,
    checkpoint 2 verifies, and once there is space the run resumes from it exactly."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs",
                                            str(disk)], capture_output=True).returncode:
        pytest.skip("needs a tmpfs mount (root)")
    try:
        workdir = disk / "run"
        config = tiny_config(tiny, 6)
        config.train.async_checkpointing = True  # the default: the error comes from a thread
        save = TrainCheckpoints.save

        def fill_then_save(self, step, *args, **kwargs):
            if step == 4:
                fill_disk(disk, leave=256 << 10)
            return save(self, step, *args, **kwargs)

        monkeypatch.setattr(TrainCheckpoints, "save", fill_then_save)
        with pytest.raises(SystemExit) as exit_:
            train_lib._train(config, str(workdir))
        message = str(exit_.value.code)
        assert message.startswith("train: ") and "\n" not in message
        assert "the disk is full" in message, message
        verify_checkpoint(workdir / "checkpoints" / "2", "checkpoint 2")
        monkeypatch.undo()
        (disk / "filler").unlink()
        train_lib.Trainer(tiny_config(tiny, 6), workdir).run()
        assert metrics(workdir) == uninterrupted
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.assets
@pytest.mark.slow
def test_5_resuming_with_another_algorithm_is_refused_and_harmless_changes_recorded(
        tiny, tmp_path, capsys):
    """Failure 5: ':ppo' on a GRPO workdir set its checkpoints aside, restarted from step 0
    and overwrote metrics.jsonl, exit 0. A change of what the checkpoints hold is refused in
    one line naming the fields, exit 2, nothing touched; steps, logging and checkpoint
    cadence may change, and the change is recorded."""
    train_lib.Trainer(tiny_config(tiny, 2), tmp_path).run()
    before = snapshot(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        train_lib._train(tiny_config(tiny, 4, algorithm="ppo"), str(tmp_path))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("train: config.algo.name") and "'grpo' -> 'ppo'" in err
    assert snapshot(tmp_path) == before
    c = tiny_config(tiny, 4)
    c.train.update(checkpoint_every=1, log_samples=1)
    train_lib.Trainer(c, tmp_path).run()
    history = [json.loads(line) for line in (tmp_path / "config_history.jsonl").open()]
    assert history[-1]["changed"] == {"train.steps": [2, 4], "train.checkpoint_every": [2, 1],
                                      "train.log_samples": [2, 1]}
    assert json.loads((tmp_path / "config.json").read_text())["train"]["steps"] == 4
    assert [r["step"] for r in metrics(tmp_path)] == [1, 2, 3, 4]


@pytest.mark.assets
def test_6_export_refuses_a_non_empty_directory_and_replaces_one_only_whole(
        tiny, tmp_path, uninterrupted, capsys, monkeypatch):
    """Failure 6: orbax-to-hf overwrote an existing model directory. It refuses a non-empty
    one unless --overwrite; an export that fails half way leaves it as it was, and one that
    completes replaces it whole (written aside, renamed into place)."""
    from tools import convert_checkpoint

    ckpt = tiny[2] / "full" / "checkpoints" / "6"
    target = tmp_path / "model"
    target.mkdir()
    (target / "config.json").write_text('{"a": "base model"}')
    before = snapshot(target)
    with pytest.raises(SystemExit) as exit_:
        convert_checkpoint.main(["orbax-to-hf", str(ckpt), str(target)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "not empty" in err
    assert "--overwrite" in err and snapshot(target) == before

    def half_written(model, out, **_):
        out.mkdir(parents=True)
        (out / "model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(convert_checkpoint, "save_pretrained", half_written)
    with pytest.raises(SystemExit, match="the disk is full"):
        convert_checkpoint.main(["orbax-to-hf", str(ckpt), str(target), "--overwrite"])
    assert snapshot(target) == before and [p.name for p in tmp_path.iterdir()] == ["model"]
    monkeypatch.undo()
    convert_checkpoint.main(["orbax-to-hf", str(ckpt), str(target), "--overwrite"])
    assert (target / "model.safetensors").exists() and "base model" not in (
        target / "config.json").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary directory left


# ------------------------------------------------------------------------------ chaos
CHAOS_PHASES = ("warm start", "rollouts", "checkpoint write", "any time")


def _chaos_overrides(tiny) -> list[str]:
    """The tiny run as a user starts it, with a warm start (targets from the labels) and a
    checkpoint every step, two kept: every phase a kill can land in comes up in seconds."""
    from tests.tiny_run import tiny_overrides

    return tiny_overrides(tiny[0], tiny[1], steps=6) + [
        "--config.rollout.max_new_tokens=64", "--config.rollout.response_prefix=<safety_reasoning>",
        "--config.rft.rounds=1", "--config.rft.targets_from=labels", "--config.rft.min_kept=1",
        "--config.rft.system_prompt=", "--config.rft.epochs=2",
        "--config.train.checkpoint_every=1", "--config.train.keep_checkpoints=2"]


def _wait(predicate, proc, timeout: float = 600) -> bool:
    """Poll until ``predicate()``; False when the trainer ended first."""
    import time

    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            return False
        assert time.time() < deadline, "the trainer never reached the phase"
        time.sleep(0.01)
    return True


@pytest.mark.slow
@pytest.mark.assets
def test_chaos_killed_at_random_points_resumes_to_the_uninterrupted_run(tiny, tmp_path):
    """The real trainer on a tiny model, killed at seeded random points (SIGKILL and SIGTERM;
    during the warm start, the rollouts, the checkpoint writes, or any time) and resumed by the
    same command each time: its metrics and final parameters equal an uninterrupted run's. A
    SIGTERM always exits 0, and a checkpoint its message says is saved verifies. CHAOS_SEED
    and CHAOS_KILLS reproduce a failure."""
    import random
    import re
    import time

    from tests.tiny_run import REPO, run_train, train_command

    seed, kills = int(os.environ.get("CHAOS_SEED", "34")), int(os.environ.get("CHAOS_KILLS", "10"))
    rng = random.Random(seed)
    overrides = _chaos_overrides(tiny)
    full, workdir = tmp_path / "full", tmp_path / "chaos"
    run_train(full, overrides)
    both = [signal.SIGKILL, signal.SIGTERM]
    # each phase with each signal once (the warm start's first: it is over after them), then
    # random ones; all in a seeded order, at seeded delays
    later = [(p, s) for p in CHAOS_PHASES[1:] for s in both]
    rng.shuffle(later)
    schedule = rng.sample([("warm start", s) for s in both], 2) + later + [
        (rng.choice(CHAOS_PHASES[1:]), rng.choice(both)) for _ in range(kills)]
    log = []
    for attempt, (phase, sig) in enumerate(schedule[:kills]):
        delay = rng.uniform(0.0, 0.3)
        err_path = tmp_path / f"stderr-{attempt}.txt"
        with open(err_path, "w") as err:
            proc = subprocess.Popen(train_command(workdir, overrides), cwd=REPO,
                                    stdout=subprocess.DEVNULL, stderr=err)
        lines = len(metrics(workdir)) if (workdir / "metrics.jsonl").exists() else 0
        started = time.time()
        triggers = {
            "warm start": lambda: "RFT warm start" in err_path.read_text(errors="replace"),
            "rollouts": lambda: (workdir / "metrics.jsonl").exists() and len(
                (workdir / "metrics.jsonl").read_text().splitlines()) > lines,
            "checkpoint write": lambda: (workdir / "checkpoints").is_dir() and any(
                "orbax-checkpoint-tmp" in p.name for p in (workdir / "checkpoints").iterdir()),
            "any time": lambda: time.time() > started + 8 + 20 * delay,
        }
        reached = _wait(triggers[phase], proc)
        if reached:
            time.sleep(delay if phase != "checkpoint write" else 0.0)
            proc.send_signal(sig)
        proc.wait(timeout=600)
        stderr = err_path.read_text(errors="replace")
        log.append((attempt, phase, sig.name, reached, proc.returncode))
        assert "Traceback" not in stderr, (log, stderr[-3000:])
        if not reached or proc.returncode == 0 and "preempted" not in stderr:
            break  # it finished before the signal: the run is complete
        if sig == signal.SIGTERM:
            assert proc.returncode == 0, (log, stderr[-3000:])
            claimed = re.findall(r"checkpoint,? (\S+?/checkpoints/\d+),? (?:is )?saved", stderr)
            for path in claimed:  # what the message says is saved is there and intact
                verify_checkpoint(pathlib.Path(path), "the checkpoint said saved")
    print("chaos (attempt, phase, signal, reached, exit status):", log)
    assert sum(reached for *_, reached, _ in log) >= min(kills, 6), log  # not finished early
    run_train(workdir, overrides)
    assert metrics(workdir) == metrics(full), log
    final = max(saved_steps(full / "checkpoints"))
    assert_same_params(workdir, full, final)
