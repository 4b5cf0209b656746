"""Hugging Face checkpoints in and out: safetensors only, never pickle.

Import builds the model abstractly (no random init, no full copy on one
device) and places each tensor straight onto its mesh sharding, so a 7B model
loads on a pod slice as easily as the 135M default on a laptop. Export writes
``config.json`` + (sharded) safetensors that ``transformers`` loads unchanged.
Every mismatch (missing, unexpected, wrong shape, truncated file) is an error
that names the tensor and the file.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import zlib
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from alphaalign_jax import assets
from alphaalign_jax import sharding as shd
from alphaalign_jax.models.config import ModelConfig
from alphaalign_jax.models.transformer import Transformer, lora_a_init, rope_inv_freq

Path = tuple[str | int, ...]
# Architecture cards: the published config.json of models used without their weights.
ARCHITECTURES = pathlib.Path(__file__).resolve().parents[2] / "configs" / "architectures"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "generation_config.json", "tokenizer.model",
                   "vocab.json", "merges.txt")


def has_tokenizer_files(directory: str | pathlib.Path) -> bool:
    """Whether ``directory`` holds a tokenizer's vocabulary (not just its config)."""
    return any((pathlib.Path(directory) / name).is_file()
               for name in ("tokenizer.json", "tokenizer.model", "vocab.json"))


def load_tokenizer(directory: str | pathlib.Path, field: str):
    """The Hugging Face tokenizer of ``directory``; a directory without tokenizer files is
    an error naming it and the setting it came from (``field``), not a backend traceback."""
    import transformers

    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{field}={directory}: no such directory")
    if not has_tokenizer_files(directory):
        raise CheckpointError(f"{field}={directory}: no tokenizer files (tokenizer.json, "
                              "tokenizer.model or vocab.json) in the directory")
    return transformers.AutoTokenizer.from_pretrained(directory)


class CheckpointError(ValueError):
    """A checkpoint that does not match the model it is loaded into."""


def hf_name(path: Path) -> tuple[str, bool]:
    """HF tensor name for one of our parameter paths, and whether it is transposed.

    Our dense kernels are ``[in, out]``; torch ``nn.Linear`` weights are ``[out, in]``.
    """
    names = [str(p) for p in path]
    if names == ["embed_tokens"]:
        return "model.embed_tokens.weight", False
    if names in (["lm_head"], ["score"]):
        return f"{names[0]}.weight", True
    leaf = names[-1]
    prefix = "model." + ".".join(names[:-1])
    if leaf == "kernel":
        return prefix + ".weight", True
    if leaf == "scale":
        return prefix + ".weight", False
    if leaf == "bias":
        return prefix + ".bias", False
    raise KeyError(f"no Hugging Face name for parameter {'/'.join(names)}")


def layer_hf_names(path: Path, config: ModelConfig) -> list[tuple[str, bool]] | None:
    """For a ``scan_layers`` parameter (one a layer, stacked), each layer's ``hf_name``;
    None for any other parameter."""
    if not (config.scan_layers and path[0] == "layers"):
        return None
    return [hf_name(("layers", i) + tuple(path[1:])) for i in range(config.num_layers)]


def _param_paths(abstract_state) -> Iterator[tuple[Path, nnx.Variable]]:
    """The parameters a Hugging Face checkpoint holds (LoRA adapters are not among them)."""
    for path, var in nnx.to_flat_state(abstract_state):
        if isinstance(var, nnx.Param) and not isinstance(var, nnx.LoRAParam):
            yield path, var


def fresh_adapter(path: Path, shape: tuple[int, ...], seed: int = 0) -> jax.Array:
    """A new LoRA factor: A He-uniform (its key from ``seed`` and the path, so every run
    starts from the same adapters), B zero."""
    if path[-1] == "lora_b":
        return jnp.zeros(shape, jnp.float32)
    name = "/".join(str(p) for p in path)
    return lora_a_init(jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode())), shape)


class SafetensorsReader:
    """Lazily reads tensors from a (possibly sharded) safetensors checkpoint."""

    def __init__(self, hf_dir: str | pathlib.Path):
        self.dir = pathlib.Path(hf_dir)
        index = self.dir / "model.safetensors.index.json"
        single = self.dir / "model.safetensors"
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from e
            self.files = {name: self.dir / f for name, f in weight_map.items()}
        elif single.exists():
            self.files = {name: single for name in self._keys(single)}
        else:
            if any(self.dir.glob("*.bin")) or any(self.dir.glob("*.pt")):
                raise CheckpointError(f"{self.dir}: only pickle (.bin/.pt) weights found; we "
                                      "load safetensors only (convert with transformers first)")
            raise FileNotFoundError(f"{self.dir}: no model.safetensors or "
                                    "model.safetensors.index.json")
        for f in set(self.files.values()):
            if not f.exists():
                raise FileNotFoundError(f"{f}: safetensors shard named in the index is missing")

    @staticmethod
    def _keys(file: pathlib.Path) -> list[str]:
        try:
            with safe_open(str(file), framework="numpy") as f:
                return list(f.keys())
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{file}: unreadable safetensors file ({e})") from e

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def names(self) -> set[str]:
        return set(self.files)

    def get(self, name: str) -> np.ndarray:
        file = self.files[name]
        try:
            with safe_open(str(file), framework="numpy") as f:
                return f.get_tensor(name)
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{file}: cannot read tensor '{name}' ({e}); "
                                  "is the file truncated?") from e


def _resolve_dtype(dtype: str | jnp.dtype) -> jnp.dtype:
    try:
        return jnp.dtype(dtype)
    except TypeError as e:
        raise ValueError(f"unknown dtype '{dtype}'") from e


def abstract_model(config: ModelConfig, dtype: jnp.dtype, param_dtype: jnp.dtype) -> Transformer:
    return nnx.eval_shape(lambda: Transformer(config, dtype=dtype, param_dtype=param_dtype))


def param_shardings(model_or_state, mesh: Mesh):
    """A NamedSharding for every variable, from its logical axes and the rules."""

    def one(var):
        logical = var.get_metadata().get("logical_axes") or (None,) * len(var.shape)
        return shd.named_sharding(mesh, logical, var.shape)

    state = nnx.state(model_or_state) if isinstance(model_or_state, nnx.Module) else model_or_state
    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def from_pretrained(hf_dir: str | pathlib.Path, dtype: str | jnp.dtype = "float32",
                    mesh: Mesh | None = None, *, param_dtype: str | jnp.dtype | None = None,
                    config: ModelConfig | None = None, scan_layers: bool | None = None
                    ) -> Transformer:
    """Load an HF model directory as our :class:`Transformer`.

    ``dtype`` is the compute dtype and, unless ``param_dtype`` is given, also
    the parameter dtype. With a ``mesh``, every tensor is placed on its
    sharding as it is read. ``scan_layers`` (if given) sets the layout
    (``ModelConfig.scan_layers``): the layers' tensors are then stacked as they are read.
    """
    hf_dir = pathlib.Path(hf_dir)
    config = config or ModelConfig.from_pretrained(hf_dir)
    if scan_layers is not None:
        config = dataclasses.replace(config, scan_layers=scan_layers)
    dtype = _resolve_dtype(dtype)
    param_dtype = _resolve_dtype(param_dtype or dtype)
    reader = SafetensorsReader(hf_dir)
    model = abstract_model(config, dtype, param_dtype)
    graphdef, state = nnx.split(model)
    shardings = param_shardings(state, mesh) if mesh is not None else None
    flat_shardings = dict(nnx.to_flat_state(shardings)) if shardings is not None else {}
    expected: set[str] = set()
    for path, var in _param_paths(state):
        layers = layer_hf_names(path, config)
        values = []
        for name, transpose in layers or [hf_name(path)]:
            expected.add(name)
            if name not in reader:
                raise CheckpointError(f"{hf_dir}: tensor '{name}' is missing from the checkpoint")
            value = reader.get(name)
            if transpose:
                value = value.T
            shape = var.shape[1:] if layers else var.shape
            if value.shape != shape:
                raise CheckpointError(f"{hf_dir}: tensor '{name}' has shape "
                                      f"{tuple(value.shape)}, but the config needs {tuple(shape)}")
            values.append(np.asarray(value).astype(param_dtype))
        value = np.stack(values) if layers else values[0]
        target = flat_shardings.get(path)
        var.set_value(jax.device_put(value, target) if target is not None
                      else jnp.asarray(value))
    unexpected = sorted(reader.names() - expected - _ignorable(config))
    if unexpected:
        raise CheckpointError(f"{hf_dir}: tensors not used by a {config.model_type} model with "
                              f"this config: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    for path, var in nnx.to_flat_state(state):
        if isinstance(var, nnx.LoRAParam):
            var.set_value(jax.device_put(fresh_adapter(path, var.shape),
                                         flat_shardings.get(path)))
    inv_freq = jnp.asarray(rope_inv_freq(config.rope, config.head_dim))
    if mesh is not None:
        inv_freq = jax.device_put(inv_freq, shd.replicated(mesh))
    state["inv_freq"].set_value(inv_freq)
    return nnx.merge(graphdef, state)


def merge_adapters(model: Transformer) -> Transformer:
    """``model`` without LoRA: each adapted kernel becomes ``W + (alpha / rank) A B``
    (computed in float32, stored in the kernel's dtype), the model an HF checkpoint holds."""
    lora = model.config.lora
    if lora is None:
        return model
    config = dataclasses.replace(model.config, lora=None)
    source = dict(nnx.to_flat_state(nnx.state(model)))
    graphdef, state = nnx.split(abstract_model(config, model.dtype, model.embed_tokens[...].dtype))
    for path, var in nnx.to_flat_state(state):
        value = source[path][...]
        a = source.get(path[:-1] + ("lora_a",)) if path[-1] == "kernel" else None
        if a is not None:
            b = source[path[:-1] + ("lora_b",)][...]
            delta = jnp.matmul(a[...].astype(jnp.float32), b.astype(jnp.float32))
            value = (value.astype(jnp.float32) + lora.scale * delta).astype(value.dtype)
        var.set_value(value)
    return nnx.merge(graphdef, state)


def value_model(policy: Transformer, mesh: Mesh | None = None) -> Transformer:
    """PPO's critic: the policy's architecture with a scalar head at every position (a 1-label
    classifier, saved like an HF sequence-classification model), the backbone copied from the
    policy, the head zero-initialised (every value starts at 0), placed like the policy."""
    config = dataclasses.replace(policy.config, num_labels=1, lora=None)
    param_dtype = policy.embed_tokens[...].dtype
    graphdef, state = nnx.split(abstract_model(config, policy.dtype, param_dtype))
    source = dict(nnx.to_flat_state(nnx.state(policy)))
    shardings = dict(nnx.to_flat_state(param_shardings(state, mesh))) if mesh is not None else {}
    for path, var in nnx.to_flat_state(state):
        value = (jnp.zeros(var.shape, var.dtype) if path[0] == "score"
                 else jnp.copy(source[path][...]))
        target = shardings.get(path)
        var.set_value(jax.device_put(value, target) if target is not None else value)
    return nnx.merge(graphdef, state)


def _ignorable(config: ModelConfig) -> set[str]:
    # Tied checkpoints sometimes carry a copy of the embedding as lm_head.
    return {"lm_head.weight"} if config.tie_word_embeddings else set()


def hf_state_dict(model: Transformer, dtype: str | jnp.dtype | None = None) -> dict[str, np.ndarray]:
    """Our parameters as an HF-named dict of host NumPy arrays (LoRA adapters merged)."""
    model = merge_adapters(model)
    out = {}
    for path, var in _param_paths(nnx.state(model)):
        value = np.asarray(jax.device_get(var[...]))
        if dtype is not None:
            value = value.astype(_resolve_dtype(dtype))
        layers = layer_hf_names(path, model.config)
        for i, (name, transpose) in enumerate(layers or [hf_name(path)]):
            one = value[i] if layers else value
            out[name] = np.ascontiguousarray(one.T if transpose else one)
    return out


def save_pretrained(model: Transformer, out_dir: str | pathlib.Path, *,
                    tokenizer_dir: str | pathlib.Path | None = None,
                    dtype: str | jnp.dtype | None = None,
                    max_shard_bytes: int = 4 << 30) -> pathlib.Path:
    """Write an HF directory (config.json, safetensors, tokenizer files).

    Shards above ``max_shard_bytes`` into ``model-0000i-of-0000n.safetensors``
    with a ``model.safetensors.index.json``, as transformers does.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = hf_state_dict(model, dtype)
    config = dict(model.config.hf_config)
    if dtype is not None:
        config["torch_dtype"] = config["dtype"] = str(_resolve_dtype(dtype))
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name in sorted(tensors):
        nbytes = tensors[name].nbytes
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensors[name]
        size += nbytes
    for stale in list(out.glob("model*.safetensors")) + list(out.glob("model.safetensors.index.json")):
        stale.unlink()
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(out / fname), metadata={"format": "pt"})
            weight_map.update({name: fname for name in shard})
        total = sum(t.nbytes for t in tensors.values())
        (out / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    if tokenizer_dir is not None:
        for fname in TOKENIZER_FILES:
            src = pathlib.Path(tokenizer_dir) / fname
            if src.exists():
                shutil.copy2(src, out / fname)
    return out


def architecture(hf_dir: str, field: str) -> ModelConfig:
    """A model's architecture: its HF directory's config.json if present, else the card
    ``configs/architectures/<directory name>.json``."""
    path = pathlib.Path(hf_dir) if hf_dir else assets.smollm2_dir()
    for candidate in (path / "config.json", ARCHITECTURES / f"{path.name}.json"):
        if candidate.is_file():
            return ModelConfig.from_hf_dict(json.loads(candidate.read_text()),
                                            source=str(candidate))
    raise FileNotFoundError(f"{field}={hf_dir}: no config.json there and no card "
                            f"{ARCHITECTURES / (path.name + '.json')}")
