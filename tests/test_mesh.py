"""The same model gives the same logits on 1 device and on an 8-device CPU mesh."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from alphaalign_jax.models import from_pretrained
from alphaalign_jax.sharding import logical_to_spec, make_mesh
from tests.conftest import left_padded_batch, make_tiny_hf
from tests.multidevice import run_on_8_devices


def test_mesh_shapes_and_rules_errors():
    mesh = make_mesh()
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    with pytest.raises(ValueError, match="unknown axes"):
        make_mesh({"model": 1})
    with pytest.raises(ValueError, match="needs 4 devices"):
        make_mesh({"data": 2, "tensor": 2})
    with pytest.raises(KeyError, match="no sharding rule for logical axis 'oops'"):
        logical_to_spec(("oops",))


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
@pytest.mark.slow
def test_8_device_mesh_matches_single_device(tmp_path, kind):
    make_tiny_hf(kind, tmp_path)
    ids, mask = left_padded_batch(np.random.default_rng(0), 256, [9, 16, 3, 12, 16, 1, 7, 5])
    single = np.asarray(from_pretrained(tmp_path)(jnp.asarray(ids), jnp.asarray(mask)))
    np.save(tmp_path / "ids.npy", ids)
    np.save(tmp_path / "mask.npy", mask)
    out = run_on_8_devices(f"""
        import jax, jax.numpy as jnp, numpy as np
        from flax import nnx
        from alphaalign_jax.models import from_pretrained
        from alphaalign_jax.sharding import make_mesh, batch_sharding
        assert jax.device_count() == 8
        mesh = make_mesh({{"data": 2, "fsdp": 2, "tensor": 2}})
        model = from_pretrained("{tmp_path}", mesh=mesh)
        spec = model.layers[0].mlp.gate_proj.kernel[...].sharding.spec
        assert spec == jax.sharding.PartitionSpec("fsdp", "tensor"), spec
        ids = jax.device_put(np.load("{tmp_path}/ids.npy"), batch_sharding(mesh, 2))
        mask = jax.device_put(np.load("{tmp_path}/mask.npy"), batch_sharding(mesh, 2))
        graphdef, state = nnx.split(model)
        fwd = jax.jit(lambda s, i, m: nnx.merge(graphdef, s)(i, m),
                      out_shardings=batch_sharding(mesh, 3))
        logits = fwd(state, ids, mask)
        assert len(logits.sharding.device_set) == 8
        np.save("{tmp_path}/mesh.npy", np.asarray(logits))
        print("ok")
    """)
    assert "ok" in out
    sharded = np.load(tmp_path / "mesh.npy")
    real = mask.astype(bool)
    assert np.abs(sharded - single)[real].max() <= 1e-5
