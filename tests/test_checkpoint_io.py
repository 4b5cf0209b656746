"""HF <-> ours <-> orbax round trips, and the errors bad checkpoints must give."""

from __future__ import annotations

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from alphaalign_jax import checkpoint
from alphaalign_jax.models import CheckpointError, ConfigError, from_pretrained, save_pretrained
from tests.conftest import left_padded_batch, make_tiny_hf
from tools.convert_checkpoint import hf_to_orbax, orbax_to_hf


def _read_all(hf_dir):
    index = hf_dir / "model.safetensors.index.json"
    if index.exists():
        out = {}
        for f in set(json.loads(index.read_text())["weight_map"].values()):
            out.update(load_file(hf_dir / f))
        return out
    return load_file(hf_dir / "model.safetensors")


@pytest.mark.parametrize("scan_layers", [False, True])
def test_hf_roundtrip_is_bit_exact_and_loads_in_transformers(tiny_hf, tmp_path, scan_layers):
    kind, src, hf_model = tiny_hf
    out = save_pretrained(from_pretrained(src, scan_layers=scan_layers), tmp_path / "export",
                          max_shard_bytes=40_000)
    assert (out / "model.safetensors.index.json").exists()  # sharded export path exercised
    original, exported = _read_all(src), _read_all(out)
    assert set(exported) == set(original) - ({"lm_head.weight"} if kind == "tied" else set())
    for name, value in original.items():
        if name in exported:
            assert exported[name].dtype == value.dtype and np.array_equal(exported[name], value), name
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = torch.randint(0, 256, (2, 11))
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, hf_model(ids).logits)


def test_orbax_roundtrip_through_converter(tmp_path):
    src = tmp_path / "hf"
    make_tiny_hf("qwen2", src)
    (src / "tokenizer_config.json").write_text("{}")
    (src / "tokenizer.json").write_text("{}")
    ckpt = hf_to_orbax(src, tmp_path / "ckpt")
    model = checkpoint.load_model(ckpt)
    ids, mask = left_padded_batch(np.random.default_rng(0), 256, [7, 4])
    np.testing.assert_array_equal(np.asarray(model(jnp.asarray(ids), jnp.asarray(mask))),
                                  np.asarray(from_pretrained(src)(jnp.asarray(ids),
                                                                  jnp.asarray(mask))))
    out = orbax_to_hf(ckpt, tmp_path / "back")
    assert (out / "tokenizer_config.json").exists()
    original, exported = _read_all(src), _read_all(out)
    assert all(np.array_equal(original[k], exported[k]) for k in original)
    bf16 = orbax_to_hf(ckpt, tmp_path / "bf16", dtype="bfloat16")
    assert str(_read_all(bf16)["model.norm.weight"].dtype) == "bfloat16"
    assert json.loads((bf16 / "config.json").read_text())["dtype"] == "bfloat16"


def test_no_tokenizer_is_loud_and_leaves_no_empty_directory(tmp_path, capsys):
    """Reliability defect 5: an empty tokenizer/ hid the export's missing tokenizer."""
    make_tiny_hf("qwen2", tmp_path / "hf")
    with pytest.warns(UserWarning, match="has no tokenizer files"):
        ckpt = hf_to_orbax(tmp_path / "hf", tmp_path / "ckpt")
    assert not (ckpt / checkpoint.TOKENIZER_SUBDIR).exists()
    assert checkpoint.read_model_config(ckpt)[1] is None
    out = orbax_to_hf(ckpt, tmp_path / "back")
    assert "names no usable tokenizer" in capsys.readouterr().err
    assert not (out / "tokenizer.json").exists()


def test_checkpoint_of_another_model_is_refused(tmp_path):
    make_tiny_hf("qwen2", tmp_path / "a")
    make_tiny_hf("llama", tmp_path / "b")
    ckpt = hf_to_orbax(tmp_path / "a", tmp_path / "ckpt")
    other = from_pretrained(tmp_path / "b").config
    with pytest.raises(CheckpointError, match="different model.*model_type: qwen2 != llama"):
        checkpoint.load_model(ckpt, expect_config=other)
    with pytest.raises(CheckpointError, match="not an alphaalign checkpoint"):
        checkpoint.load_model(tmp_path / "a")


def test_a_scanned_checkpoint_keeps_its_layout_and_a_run_refuses_the_other(tmp_path):
    make_tiny_hf("qwen2", tmp_path / "hf")
    scanned = from_pretrained(tmp_path / "hf", scan_layers=True)
    run = checkpoint.TrainCheckpoints(tmp_path / "run", model_config=scanned.config,
                                      hf_dir=tmp_path / "hf", max_to_keep=1, async_save=False)
    checkpoint.save_model(run.step_dir(3), scanned)
    loaded = checkpoint.load_model(run.step_dir(3))
    assert loaded.config.scan_layers and loaded.layers.mlp.up_proj.kernel.shape[0] == 2
    ids, mask = left_padded_batch(np.random.default_rng(0), 256, [7, 4])
    np.testing.assert_array_equal(np.asarray(loaded(jnp.asarray(ids), jnp.asarray(mask))),
                                  np.asarray(scanned(jnp.asarray(ids), jnp.asarray(mask))))
    run.check_model(3)
    plain = checkpoint.TrainCheckpoints(tmp_path / "run", model_config=from_pretrained(
        tmp_path / "hf").config, hf_dir=tmp_path / "hf", max_to_keep=1, async_save=False)
    with pytest.raises(CheckpointError, match="stacked, but config.model.scan_layers=False"):
        plain.check_model(3)


@pytest.fixture
def tiny_dir(tmp_path):
    make_tiny_hf("llama", tmp_path / "m")
    return tmp_path / "m"


def test_missing_safetensors_is_a_clear_error(tiny_dir):
    (tiny_dir / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        from_pretrained(tiny_dir)


def test_missing_shard_named_in_index(tiny_dir, tmp_path):
    out = save_pretrained(from_pretrained(tiny_dir), tmp_path / "sharded", max_shard_bytes=40_000)
    victim = sorted(out.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=victim.name):
        from_pretrained(out)


def test_truncated_safetensors_is_a_clear_error(tiny_dir):
    path = tiny_dir / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        from_pretrained(tiny_dir)


def test_unknown_model_type_is_a_clear_error(tiny_dir):
    cfg = json.loads((tiny_dir / "config.json").read_text())
    cfg["model_type"] = "mamba"
    (tiny_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="unknown model_type 'mamba'"):
        from_pretrained(tiny_dir)


def test_shape_mismatch_names_the_tensor(tiny_dir):
    cfg = json.loads((tiny_dir / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (tiny_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"'model\.layers\.0\.mlp\..*' has shape"):
        from_pretrained(tiny_dir)


def test_pickle_only_checkpoint_is_refused(tiny_dir, tmp_path):
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_dir, pickled)
    (pickled / "model.safetensors").unlink()
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(CheckpointError, match="safetensors only"):
        from_pretrained(pickled)
