"""The training job end to end on a tiny model, for GRPO and for PPO (critic, GAE, two
mini-batches, KL in the reward): resume exactness, preemption, meshes, config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphaalign_jax import config as config_lib
from alphaalign_jax.rl import algorithms
from tests.tiny_run import (
    PROMPTS,
    REPO,
    deterministic,
    make_tiny_policy,
    read_metrics,
    run_train,
    tiny_overrides,
    train_command,
    write_prompts,
)


def assert_same_metrics(a: list[dict], b: list[dict], rtol: float = 0.0, atol: float = 0.0):
    a, b = deterministic(a), deterministic(b)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert np.isclose(ra[k], rb[k], rtol=rtol, atol=atol), (ra["step"], k, ra[k], rb[k])


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory, smollm2_dir):
    root = tmp_path_factory.mktemp("tiny")
    policy = make_tiny_policy(root / "policy", smollm2_dir)
    train_file = write_prompts(root / "train.jsonl")
    return policy, train_file


@pytest.fixture(scope="module", params=["grpo", "ppo"])
def algorithm(request) -> str:
    return request.param


def overrides(tiny_setup, algorithm: str, steps: int = 4) -> list[str]:
    # Adam's eps at 1e-3: a near-zero gradient element (the critic's zero-initialised head,
    # or a policy weight whose gradient is summation-order noise) gets a +-lr step from Adam
    # at eps 1e-8 whose sign follows float reduction order, so the 8-device run drifts from
    # the 1-device one (seen on an AVX-512 host: GRPO's grad_norm 0.6% apart at step 2, after
    # step 1 agreed to the last digit). With a larger eps the update is linear in such
    # gradients and both agree.
    common = ["--config.optim.eps=1e-3"]
    ppo = ["--config.algo.kl_penalty=0.05", "--config.algo.mini_batches=2",
           "--config.optim.warmup_steps=0"]
    return tiny_overrides(*tiny_setup, steps=steps) + common + (ppo if algorithm == "ppo" else [])


@pytest.fixture(scope="module")
def uninterrupted(tiny_setup, algorithm, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("full")
    run_train(workdir, overrides(tiny_setup, algorithm), config_arg=algorithm)
    return workdir, read_metrics(workdir)


@pytest.mark.assets
@pytest.mark.slow
def test_run_writes_metrics_checkpoints_and_never_recompiles(uninterrupted, algorithm):
    workdir, rows = uninterrupted
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    critic = ("critic/value_loss", "critic/explained_variance", "critic/value_mean",
              "critic/return_mean", "critic/clip_frac", "critic/grad_norm")
    for key in ("reward/total", "reward/format_rate/harmful", "reward/refusal_rate/harmful",
                "reward/over_refusal_rate/benign", "kl", "entropy", "clip_frac/high",
                "logprob_diff/sampler_vs_trainer", "rollout/tokens_per_s", "loss") + (
                    critic if algorithm == "ppo" else ()):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert all(r["compiles/train_step"] == 1 for r in rows)
    for phase in ("rollout", "update"):  # model FLOPs of each phase and their rate
        assert all(r[f"flops/{phase}"] > 0 and r[f"flops_per_s/{phase}"] > 0 for r in rows)
    for r in rows:  # the rollout's own phases fit inside it
        parts = sum(r[f"time/rollout_{p}"] for p in ("prefill_s", "decode_s", "detokenize_s"))
        assert 0 < parts <= r["time/rollout_s"]
    # sampler log-probs are what the trainer computes for the same tokens (first update)
    assert rows[0]["logprob_diff/sampler_vs_trainer"] < 1e-4
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()
                  if p.name.isdigit()) == [2, 4]
    assert (workdir / "tensorboard").exists()


@pytest.mark.assets
@pytest.mark.slow
def test_resume_gives_identical_metrics(tiny_setup, algorithm, uninterrupted, tmp_path):
    _, full = uninterrupted
    run_train(tmp_path, overrides(tiny_setup, algorithm, steps=2), config_arg=algorithm)
    run_train(tmp_path, overrides(tiny_setup, algorithm, steps=4), config_arg=algorithm)
    assert_same_metrics(read_metrics(tmp_path), full)


def _wait_for(predicate, proc, timeout=600):
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited early: {proc.stderr.read()[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the trainer")
        time.sleep(0.2)


@pytest.mark.assets
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
@pytest.mark.slow
def test_killed_run_resumes_exactly(tiny_setup, algorithm, uninterrupted, tmp_path, sig):
    _, full = uninterrupted
    proc = subprocess.Popen(train_command(tmp_path, overrides(tiny_setup, algorithm), algorithm),
                            cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "metrics.jsonl"
    if sig == signal.SIGTERM:
        _wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 1, proc)
    else:  # SIGKILL only after the step-2 checkpoint is committed (orbax renames it atomically)
        _wait_for(lambda: (tmp_path / "checkpoints" / "2").is_dir(), proc)
    os.kill(proc.pid, sig)
    proc.wait(timeout=600)
    if sig == signal.SIGTERM:
        assert proc.returncode == 0, proc.stderr.read()[-3000:]
        assert any(p.name.isdigit() for p in (tmp_path / "checkpoints").iterdir())
    run_train(tmp_path, overrides(tiny_setup, algorithm), config_arg=algorithm)
    assert_same_metrics(read_metrics(tmp_path), full)


@pytest.mark.assets
@pytest.mark.slow
def test_8_device_mesh_gives_the_same_losses(tiny_setup, algorithm, uninterrupted, tmp_path):
    _, full = uninterrupted
    run_train(tmp_path, overrides(tiny_setup, algorithm) + [
        "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2"],
        env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}, config_arg=algorithm)
    sharded = read_metrics(tmp_path)
    keys = ("loss", "kl", "reward/total", "grad_norm", "entropy") + (
        ("critic/value_loss", "critic/grad_norm", "critic/explained_variance")
        if algorithm == "ppo" else ())
    # Steps 1-2 only: step 1 samples from the same parameters, step 2 from parameters one
    # update apart by reduction-order noise. Later, that noise reaches a T=1 sampling boundary
    # and a token flips (seen on an AVX-512 host at step 3: the reward model's score moved),
    # after which the two runs train on different rollouts and their metrics part as any two
    # trajectories do; that is float chaos, not a sharding error.
    assert len(full) == len(sharded) == 4
    for a, b in zip(full[:2], sharded[:2]):
        for key in keys:
            assert np.isclose(a[key], b[key], rtol=1e-3, atol=1e-5), (a["step"], key, a[key],
                                                                      b[key])


@pytest.mark.assets
@pytest.mark.slow
def test_scanned_layers_train_shard_and_resume_like_the_plain_run(tiny_setup, algorithm,
                                                                  uninterrupted, tmp_path):
    """model.scan_layers on the 8-device mesh, stopped after step 2 and resumed from its
    stacked checkpoint: steps 1-2 agree with the plain 1-device run as the mesh test's do."""
    _, full = uninterrupted
    scanned = ["--config.model.scan_layers=True", "--config.mesh.data=2", "--config.mesh.fsdp=2",
               "--config.mesh.tensor=2"]
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    for steps in (2, 4):
        run_train(tmp_path, overrides(tiny_setup, algorithm, steps=steps) + scanned, env=env,
                  config_arg=algorithm)
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["compiles/train_step"] == 1 for r in rows)
    for a, b in zip(full[:2], rows[:2]):
        for key in ("loss", "kl", "reward/total", "grad_norm", "entropy"):
            assert np.isclose(a[key], b[key], rtol=1e-3, atol=1e-5), (a["step"], key, a[key],
                                                                      b[key])


def test_config_validation_names_the_field():
    c = config_lib.base_config()
    c.rollout.num_samples = 1
    with pytest.raises(config_lib.ConfigValueError, match=r"config\.rollout\.num_samples"):
        config_lib.validate(c)
    c = config_lib.base_config()
    c.algo.micro_batch_size = 7
    with pytest.raises(config_lib.ConfigValueError, match=r"config\.algo\.micro_batch_size"):
        config_lib.validate(c)
    c = config_lib.base_config()
    c.reward.helpfulness = "gpt4"
    with pytest.raises(config_lib.ConfigValueError, match=r"config\.reward\.helpfulness"):
        config_lib.validate(c)
    c = config_lib.base_config()
    c.reward.refusal_markers = ("sorry", " ")
    with pytest.raises(config_lib.ConfigValueError, match=r"config\.reward\.refusal_markers"):
        config_lib.validate(c)
    c = config_lib.base_config()
    c.reward.markers_on = "harmful"
    with pytest.raises(config_lib.ConfigValueError, match=r"config\.reward\.markers_on"):
        config_lib.validate(c)


@pytest.mark.assets
@pytest.mark.slow
def test_resuming_with_another_model_is_refused_naming_the_field(tiny_setup, uninterrupted,
                                                                  tmp_path):
    import json
    import shutil

    policy, train_file = tiny_setup
    workdir, _ = uninterrupted
    other = shutil.copytree(policy, tmp_path / "other_policy")
    config = json.loads((other / "config.json").read_text())
    config["rope_parameters"]["rope_theta"] = 10000.0  # same shapes, different model
    (other / "config.json").write_text(json.dumps(config))
    run_dir = shutil.copytree(workdir, tmp_path / "run")
    result = subprocess.run(
        train_command(run_dir, tiny_overrides(other, train_file, steps=6)), cwd=REPO,
        capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "checkpoint is of a different model" in result.stderr
    assert "rope:" in result.stderr and "100000.0" in result.stderr


def test_non_finite_gradient_is_not_applied():
    import optax
    from flax import nnx

    from alphaalign_jax.models import ModelConfig, Transformer
    from alphaalign_jax.rl.step import LossSettings, UpdateBatch, train_step

    cfg = ModelConfig.from_hf_dict({"model_type": "llama", "vocab_size": 32, "hidden_size": 16,
                                    "intermediate_size": 32, "num_hidden_layers": 1,
                                    "num_attention_heads": 2, "rope_theta": 1e4})
    graphdef, params, rest = nnx.split(Transformer(cfg), nnx.Param, ...)
    tx = optax.adam(1e-2)
    opt_state = tx.init(params)
    b, p, c = 2, 3, 4
    old = jnp.zeros((b, c)).at[0, 1].set(jnp.nan)
    batch = UpdateBatch(jnp.ones((1, p), jnp.int32), jnp.ones((1, p), bool),
                        jnp.ones((b, c), jnp.int32), jnp.ones((b, c)), old, jnp.zeros((b, c)),
                        jnp.ones((b,)))
    settings = LossSettings(0.2, 0.2, 0.0, "token_mean", c, 1.0, 2, group_size=2)
    before = jax.tree.map(np.asarray, params)
    new_params, _, metrics = jax.jit(
        lambda pr, o, bt: train_step(graphdef, pr, rest, o, bt, tx=tx, settings=settings,
                                     micro_batch_size=2))(params, opt_state, batch)
    assert not bool(metrics["finite"])
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, new_params))


@pytest.mark.assets
@pytest.mark.slow
def test_trained_checkpoint_exports_to_transformers(uninterrupted, tmp_path):
    import torch
    import transformers

    from alphaalign_jax import checkpoint
    from tools.convert_checkpoint import orbax_to_hf

    workdir, _ = uninterrupted
    step_dir = workdir / "checkpoints" / "4"
    out = orbax_to_hf(step_dir, tmp_path / "hf")
    assert (out / "tokenizer.json").exists() and (out / "chat_template.jinja").exists()
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ours = checkpoint.load_model(step_dir)
    ids = np.random.default_rng(0).integers(0, ours.config.vocab_size, (2, 12))
    with torch.no_grad():
        ref = hf(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(ids))), ref, atol=1e-4)
    # the trained weights moved away from the initial policy
    initial = transformers.AutoModelForCausalLM.from_pretrained(
        checkpoint.read_model_config(step_dir)[1], dtype=torch.float32)
    with torch.no_grad():
        assert not np.allclose(initial(torch.tensor(ids)).logits.numpy(), ref, atol=1e-4)
    # the export is the trained model: its chat template renders the trainer's prompt byte for
    # byte, its generation config stops at </answer>, and it has a model card
    from alphaalign_jax.rewards import policy_prompt

    c = json.loads((workdir / "config.json").read_text())
    base = transformers.AutoTokenizer.from_pretrained(c["model"]["hf_dir"])
    exported = transformers.AutoTokenizer.from_pretrained(out)
    for query in [p for _, p in PROMPTS] + ['a {prompt} slot, "quotes" and \\boxed{x}\n']:
        assert exported.apply_chat_template(
            [{"role": "user", "content": query}], add_generation_prompt=True, tokenize=False
        ) == policy_prompt(query, base, c["template"], c["system_prompt"],
                           c["rollout"]["response_prefix"])
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["stop_strings"] == ["</answer>"] and generation["do_sample"]
    card = (out / "README.md").read_text()
    assert "step 4" in card and c["rollout"]["response_prefix"] in card


@pytest.mark.parametrize("system_prompt", ["", "Answer in the format of these examples."])
@pytest.mark.parametrize("response_prefix", ["", "<safety_reasoning>"])
def test_run_chat_template_renders_the_policy_prompt(smollm2_dir, system_prompt,
                                                     response_prefix):
    import transformers

    from alphaalign_jax.export import run_chat_template
    from alphaalign_jax.rewards import DEFAULT_SAFETY_TEMPLATE, policy_prompt

    base = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    tok = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    tok.chat_template = run_chat_template(base.chat_template, DEFAULT_SAFETY_TEMPLATE,
                                          system_prompt, response_prefix)
    query = 'How do I {prompt} "bake" \\boxed{x} bread?\n'
    assert tok.apply_chat_template([{"role": "user", "content": query}],
                                   add_generation_prompt=True, tokenize=False) == policy_prompt(
        query, base, DEFAULT_SAFETY_TEMPLATE, system_prompt, response_prefix)


def test_the_default_is_the_teaching_recipe_and_its_variants():
    from alphaalign_jax.rewards import REFUSAL_MARKERS, WORKED_EXAMPLES_SYSTEM_PROMPT
    from configs import smollm2_135m_cpu

    c = smollm2_135m_cpu.get_config()
    config_lib.validate(c)
    assert c.system_prompt == "" and c.rft.system_prompt == ""
    assert c.rft.rounds > 0 and c.rft.targets_from == "labels" and c.algo.beta > 0
    assert c.data.restate_forms == 0.5
    assert (c.reward.helpfulness, c.reward.markers_on, c.reward.whole_refusal) == (
        "lm_judge", "benign", True)
    assert tuple(c.reward.refusal_markers) == REFUSAL_MARKERS
    c = smollm2_135m_cpu.get_config("prefix_reward")
    config_lib.validate(c)
    assert (tuple(c.reward.refusal_markers), c.reward.whole_refusal) == ((), False)
    c = smollm2_135m_cpu.get_config("sampled_warm_start")
    config_lib.validate(c)
    assert (c.rft.targets_from, c.rft.system_prompt, c.data.restate_forms) == (
        "samples", WORKED_EXAMPLES_SYSTEM_PROMPT, 0.0)
    c = smollm2_135m_cpu.get_config("scaffold")
    config_lib.validate(c)
    assert (c.system_prompt, c.rft.rounds, c.train.steps) == (WORKED_EXAMPLES_SYSTEM_PROMPT, 0, 20)
    with pytest.raises(config_lib.ConfigValueError, match="unknown option rft;"):
        smollm2_135m_cpu.get_config("rft")
    c = smollm2_135m_cpu.get_config("smoke")  # every phase, small: evaluated and exported
    config_lib.validate(c)
    assert c.train.steps <= 2 and c.rft.rounds == 1 and c.train.eval_prompts and c.train.export_hf
    for algorithm in algorithms.ALGORITHMS:  # a smoke run of every algorithm
        config_lib.validate(smollm2_135m_cpu.get_config(f"smoke,{algorithm}"))
    with pytest.raises(config_lib.ConfigValueError, match="smoke"):
        smollm2_135m_cpu.get_config("smoke,scaffold")

def test_every_config_field_has_a_meaning():
    """config.field_help reads each field's meaning from the comments of base_config."""
    def fields(d, prefix=""):
        for k, v in d.items():
            yield from fields(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + k]

    meanings = config_lib.field_help()
    names = list(fields(config_lib.base_config("ppo").to_dict()))
    assert set(names) == set(meanings) and all(meanings[n] for n in names)


def test_help_lists_fields_options_and_example_and_smoke_is_short_only():
    help_run = subprocess.run(train_command(REPO / "unused", ["--help"]), cwd=REPO,
                              capture_output=True, text=True, timeout=300)
    assert help_run.returncode == 0, help_run.stderr[-2000:]
    for needle in ("rollout.max_new_tokens", "train.export_hf", "smoke", "scaffold",
                   "example:", "--workdir"):
        assert needle in help_run.stdout
    assert all(name in help_run.stdout for name in config_lib.field_help())
    long_smoke = subprocess.run(train_command(REPO / "unused", [], config_arg="smoke,scaffold"),
                                cwd=REPO, capture_output=True, text=True, timeout=300)
    assert long_smoke.returncode == 2
    assert len(long_smoke.stderr.strip().splitlines()) == 1
    assert "smoke" in long_smoke.stderr


@pytest.mark.assets
@pytest.mark.slow
def test_no_learning_signal_is_named_and_the_run_is_evaluated_and_exported(tiny_setup, tmp_path,
                                                                          monkeypatch):
    """Every group's rewards equal for 3 steps: one 'no learning signal' warning. After the
    last step train.eval_prompts and train.export_hf give eval/results.md and hf/."""
    from alphaalign_jax import train as train_lib

    policy, train_file = tiny_setup
    c = config_lib.base_config()
    c.model.hf_dir, c.data.train_file = str(policy), str(train_file)
    c.rollout.update(num_samples=2, max_new_tokens=8, max_prompt_len=192)
    c.reward.helpfulness = "none"
    c.algo.update(beta=0.0, micro_batch_size=4)
    c.train.update(steps=4, prompts_per_step=2, plot=False, async_checkpointing=False,
                   checkpoint_every=4, eval_prompts=2, eval_new_tokens=8, export_hf=True)
    warnings = []
    monkeypatch.setattr(train_lib.logging, "warning", lambda msg, *a: warnings.append(msg % a))

    def constant(records, texts):
        return np.zeros((len(records), len(texts[0])), np.float32), {}

    workdir = train_lib.Trainer(c, tmp_path, reward_fn=constant).run()
    assert len([w for w in warnings if w.startswith("no learning signal")]) == 1
    found = train_lib.finish(c, workdir)
    assert (found["evaluation"].parent / "results.json").exists()
    assert (found["HF export"] / "chat_template.jinja").exists()
