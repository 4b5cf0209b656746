"""Run-directory ownership and checkpoint trust: one writer per workdir, damaged checkpoints
set aside for the previous good one, write errors and other models stopped in one line."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest

from alphaalign_jax import config as config_lib
from alphaalign_jax import train as train_lib
from alphaalign_jax.checkpoint import MANIFEST
from alphaalign_jax.models import CheckpointError
from alphaalign_jax.rundir import RunDirLock, RunDirLocked
from tests.tiny_run import make_tiny_policy, read_metrics, write_prompts

@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smollm2_dir):
    root = tmp_path_factory.mktemp("reliability")
    return (make_tiny_policy(root / "policy", smollm2_dir, init_std=1.0),
            write_prompts(root / "train.jsonl"), root)


def tiny_config(tiny, steps: int, policy: pathlib.Path | None = None):
    c = config_lib.base_config()
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
def test_non_finite_loss_names_the_last_verified_checkpoint(tiny, tmp_path):
    """Defect 2: the NaN message named the damaged checkpoint as the latest good one."""
    import jax
    import jax.numpy as jnp

    train_lib.Trainer(tiny_config(tiny, 2), tmp_path).run()
    trainer = train_lib.Trainer(tiny_config(tiny, 4), tmp_path)
    assert trainer.restore_latest()
    trainer.params = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), trainer.params)
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
