"""LoRA: the adapters' math against qwix (the library Tunix and MaxText use), the merged
export against transformers, and a run that trains the adapters alone, checkpoints them,
resumes exactly and refuses a checkpoint of the other kind."""

from __future__ import annotations

import dataclasses
import json
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alphaalign_jax import config as config_lib
from alphaalign_jax.models import (
    ConfigError,
    LoraConfig,
    ModelConfig,
    RopeConfig,
    Transformer,
    merge_adapters,
    trainable,
)
from tests.tiny_run import (
    REPO,
    make_tiny_policy,
    read_metrics,
    run_train,
    tiny_overrides,
    train_command,
    write_prompts,
)

TINY = ModelConfig(model_type="qwen2", vocab_size=128, hidden_size=32, intermediate_size=64,
                   num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, rms_norm_eps=1e-6,
                   rope=RopeConfig(theta=10000.0), max_position_embeddings=64,
                   tie_word_embeddings=False, qkv_bias=True)
LORA = LoraConfig(rank=4, alpha=8.0, targets=("q_proj", "v_proj", "o_proj", "up_proj",
                                              "down_proj"))
IDS = jnp.asarray(np.random.default_rng(0).integers(0, TINY.vocab_size, (2, 10)))


def with_adapters(config: ModelConfig, seed: int = 1) -> Transformer:
    """A model with adapters whose B factors are random (fresh ones are zero: no effect)."""
    model = Transformer(config, rngs=nnx.Rngs(0))
    graphdef, adapters, rest = nnx.split(model, nnx.LoRAParam, ...)
    keys = iter(jax.random.split(jax.random.key(seed), 64))
    adapters = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(next(keys), x.shape), adapters)
    return nnx.merge(graphdef, adapters, rest)


def test_fresh_adapters_change_nothing_and_are_all_that_trains():
    base = Transformer(TINY, rngs=nnx.Rngs(0))
    lora = Transformer(dataclasses.replace(TINY, lora=LORA), rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(np.asarray(lora(IDS)), np.asarray(base(IDS)))
    adapters = nnx.state(lora, trainable(lora.config))
    names = {p[-1] for p, _ in nnx.to_flat_state(adapters)}
    assert names == {"lora_a", "lora_b"}
    assert {p[-2] for p, _ in nnx.to_flat_state(adapters)} == set(LORA.targets)
    assert trainable(TINY) is nnx.Param


def test_adapters_match_qwix_logit_for_logit():
    """The same base and the same A, B under qwix's LoraProvider give our logits."""
    qwix = pytest.importorskip("qwix")
    ours = with_adapters(dataclasses.replace(TINY, lora=LORA))
    theirs = Transformer(TINY, rngs=nnx.Rngs(0))  # the same base weights (same seed)
    provider = qwix.LoraProvider(module_path=".*(" + "|".join(LORA.targets) + ")$",
                                 rank=LORA.rank, alpha=LORA.alpha)
    theirs = qwix.apply_lora_to_model(theirs, provider, IDS, rngs=nnx.Rngs(1))
    ours_flat = {path[:-1] + ("kernel_" + path[-1],): var for path, var in  # qwix's names
                 nnx.to_flat_state(nnx.state(ours, nnx.LoRAParam))}
    theirs_state = nnx.state(theirs, nnx.LoRAParam)
    theirs_flat = dict(nnx.to_flat_state(theirs_state))
    assert set(theirs_flat) == set(ours_flat)  # qwix put adapters where ours are
    for path, var in theirs_flat.items():
        assert var.shape == ours_flat[path].shape, path
        var.set_value(ours_flat[path][...])
    nnx.update(theirs, theirs_state)
    np.testing.assert_allclose(np.asarray(theirs(IDS)), np.asarray(ours(IDS)), atol=1e-5)
    assert not np.allclose(np.asarray(ours(IDS)),
                           np.asarray(Transformer(TINY, rngs=nnx.Rngs(0))(IDS)), atol=1e-3)


def test_merged_model_and_scanned_layers_compute_the_same_logits():
    model = with_adapters(dataclasses.replace(TINY, lora=LORA))
    merged = merge_adapters(model)
    assert merged.config.lora is None and not nnx.state(merged, nnx.LoRAParam)
    np.testing.assert_allclose(np.asarray(merged(IDS)), np.asarray(model(IDS)), atol=1e-5)
    scanned = with_adapters(dataclasses.replace(TINY, lora=LORA, scan_layers=True))
    layers = nnx.state(scanned.layers)
    assert layers["self_attn"]["q_proj"]["lora_a"].shape == (2, 32, 4)
    np.testing.assert_allclose(np.asarray(merge_adapters(scanned)(IDS)),
                               np.asarray(scanned(IDS)), atol=1e-5)


def test_merged_export_loads_in_transformers_with_the_same_logits(tmp_path):
    import torch
    import transformers

    from alphaalign_jax.models import from_pretrained, save_pretrained

    hf_config = transformers.Qwen2Config(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(hf_config).save_pretrained(tmp_path / "base")
    config = dataclasses.replace(ModelConfig.from_pretrained(tmp_path / "base"), lora=LORA)
    model = from_pretrained(tmp_path / "base", config=config)
    graphdef, adapters, rest = nnx.split(model, nnx.LoRAParam, ...)
    assert all(not np.any(np.asarray(v[...])) for p, v in nnx.to_flat_state(adapters)
               if p[-1] == "lora_b")  # fresh: B is zero
    keys = iter(jax.random.split(jax.random.key(2), 64))
    adapters = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(next(keys), x.shape), adapters)
    model = nnx.merge(graphdef, adapters, rest)
    save_pretrained(model, tmp_path / "export")
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export",
                                                                 dtype=torch.float32)
    with torch.no_grad():
        theirs = exported(torch.tensor(np.asarray(IDS))).logits.numpy()
    np.testing.assert_allclose(np.asarray(merge_adapters(model)(IDS)), theirs, atol=1e-4)
    np.testing.assert_allclose(np.asarray(model(IDS)), theirs, atol=1e-4)


@pytest.mark.parametrize("rank, alpha, targets, field", [
    (-1, 16.0, ("q_proj",), "model.lora_rank"),
    (4, 0.0, ("q_proj",), "model.lora_alpha"),
    (4, 16.0, ("q_proj", "attn"), "model.lora_targets"),
    (4, 16.0, (), "model.lora_targets"),
])
def test_bad_lora_settings_name_the_field(rank, alpha, targets, field):
    c = config_lib.base_config()
    c.model.update(lora_rank=rank, lora_alpha=alpha, lora_targets=targets)
    with pytest.raises(config_lib.ConfigValueError, match=rf"config\.{field}"):
        config_lib.validate(c)
    if rank:
        with pytest.raises(ConfigError, match=rf"config\.{field}"):
            LoraConfig(rank, alpha, targets)


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory, smollm2_dir):
    root = tmp_path_factory.mktemp("lora")
    return make_tiny_policy(root / "policy", smollm2_dir), write_prompts(root / "train.jsonl")


LORA_FLAGS = ["--config.model.lora_rank=4", "--config.model.lora_alpha=8.0",
              "--config.optim.learning_rate=1e-2"]


@pytest.fixture(scope="module")
def lora_run(tiny_setup, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("lora_full")
    run_train(workdir, tiny_overrides(*tiny_setup, steps=4) + LORA_FLAGS)
    return workdir, read_metrics(workdir)


@pytest.mark.assets
@pytest.mark.slow
def test_a_lora_run_checkpoints_adapters_resumes_exactly_and_exports(tiny_setup, lora_run,
                                                                     tmp_path):
    import torch
    import transformers

    from alphaalign_jax import checkpoint
    from tools.convert_checkpoint import orbax_to_hf

    policy, _ = tiny_setup
    workdir, full = lora_run
    # two commands (2 steps, then on to 4) give the uninterrupted run's metrics exactly
    run_train(tmp_path, tiny_overrides(*tiny_setup, steps=2) + LORA_FLAGS)
    run_train(tmp_path, tiny_overrides(*tiny_setup, steps=4) + LORA_FLAGS)
    from tests.test_train import assert_same_metrics

    assert_same_metrics(read_metrics(tmp_path), full)
    # the checkpoint holds the adapters (and their optimizer state), not the base weights
    step_dir = workdir / "checkpoints" / "4"
    for item in ("params", "opt_state"):
        saved = json.loads((step_dir / item / "_METADATA").read_text())["tree_metadata"]
        arrays = [k for k, v in saved.items() if v["value_metadata"].get("write_shape")]
        assert arrays and all("'lora_a'" in k or "'lora_b'" in k for k in arrays), arrays
    # the base stayed frozen; the adapters moved
    ours = checkpoint.load_model(step_dir)
    hf = transformers.AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32)
    q = np.asarray(ours.layers[0].self_attn.q_proj.kernel[...])
    np.testing.assert_array_equal(q, hf.model.layers[0].self_attn.q_proj.weight.detach().numpy().T)
    assert np.abs(np.asarray(ours.layers[0].self_attn.q_proj.lora_b[...])).max() > 0
    # orbax-to-hf merges them: transformers computes the LoRA model's logits
    out = orbax_to_hf(step_dir, tmp_path / "hf")
    exported = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = np.random.default_rng(0).integers(0, ours.config.vocab_size, (2, 12))
    with torch.no_grad():
        theirs = exported(torch.tensor(ids)).logits.numpy()
        base = hf(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(ids))), theirs, atol=1e-4)
    assert not np.allclose(theirs, base, atol=1e-4)


def refused(workdir, flags: list[str], tiny_setup) -> str:
    """Resume ``workdir`` with ``flags``: one line, exit 2, nothing written; the line."""
    before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}
    result = subprocess.run(train_command(workdir, tiny_overrides(*tiny_setup, steps=6) + flags),
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*")} == before
    return lines[0]


@pytest.mark.assets
@pytest.mark.slow
def test_lora_and_full_checkpoints_refuse_each_other(tiny_setup, lora_run, tmp_path):
    workdir, _ = lora_run
    line = refused(workdir, [], tiny_setup)
    assert "model.lora_rank" in line, line
    full = tmp_path / "full"
    run_train(full, tiny_overrides(*tiny_setup, steps=2))
    line = refused(full, LORA_FLAGS, tiny_setup)
    assert "model.lora_rank" in line, line
    json.loads((full / "config.json").read_text())  # the recorded config is intact
