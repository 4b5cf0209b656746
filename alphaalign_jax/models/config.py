"""Model hyper-parameters read from a Hugging Face ``config.json``.

Every field that changes the math is read explicitly (RoPE above all: SmolLM2
uses ``rope_theta`` 100000, and a family default would give wrong logits).
Anything we do not implement is an error that names the field, never a silently
different model.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "LlamaForSequenceClassification": "llama",
    "Qwen2ForSequenceClassification": "qwen2",
}
SUPPORTED_MODEL_TYPES = ("llama", "qwen2")
SUPPORTED_ROPE_TYPES = ("default", "llama3", "linear")


class ConfigError(ValueError):
    """A model config we cannot honour exactly."""


# The projections an adapter can sit on (each block's attention and MLP matmuls).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters (Hu et al. 2021) on the ``targets`` projections: ``x W`` becomes
    ``x W + (alpha / rank) x A B`` with ``A [in, rank]`` He-uniform and ``B [rank, out]``
    zero, so a fresh adapter changes nothing. The parametrisation of qwix's ``LoraProvider``
    (tests/test_lora.py checks the logits against qwix); only A and B are trained."""

    rank: int
    alpha: float
    targets: tuple[str, ...] = LORA_TARGETS

    def __post_init__(self) -> None:
        for field, problem in lora_problems(self.rank, self.alpha, self.targets):
            raise ConfigError(f"config.{field}: {problem}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def lora_problems(rank, alpha, targets) -> list[tuple[str, str]]:
    """``(run config field, what is wrong)`` for each problem of LoRA settings."""
    problems = []
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 0:
        problems.append(("model.lora_rank", f"must be an int >= 0 (0: no adapters), got {rank!r}"))
    elif rank > 0 and not (isinstance(alpha, (int, float)) and alpha > 0):
        problems.append(("model.lora_alpha", f"must be > 0, got {alpha!r}"))
    if isinstance(targets, str) or not all(isinstance(t, str) for t in targets):
        problems.append(("model.lora_targets", f"must be a tuple of projection names, got "
                                               f"{targets!r}"))
    elif unknown := [t for t in targets if t not in LORA_TARGETS]:
        problems.append(("model.lora_targets", f"unknown module name(s) {unknown}; the "
                         f"projections are {list(LORA_TARGETS)}"))
    elif rank and not targets:
        problems.append(("model.lora_targets", "is empty: name at least one projection"))
    return problems


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding parameters (HF ``rope_parameters`` / ``rope_scaling``)."""

    theta: float
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a decoder-only transformer (Llama / Qwen2 / SmolLM2)."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope: RopeConfig
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool = False
    o_bias: bool = False
    num_labels: int = 0  # > 0 for a sequence-classification (reward model) head
    pad_token_id: int | None = None
    # Layout, not architecture: the blocks' parameters (and KV caches) stacked on a leading
    # "layers" axis and run as one lax.scan, so compile time does not grow with depth.
    scan_layers: bool = False
    # Trained adapters on the projections (None: every parameter is trained).
    lora: LoraConfig | None = None
    hf_config: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @property
    def is_classifier(self) -> bool:
        return self.num_labels > 0

    def adapter(self, projection: str) -> LoraConfig | None:
        """The LoRA settings of ``projection`` (None: it has no adapter)."""
        return self.lora if self.lora is not None and projection in self.lora.targets else None

    @classmethod
    def from_hf_dict(cls, cfg: dict[str, Any], source: str = "config.json") -> "ModelConfig":
        """Build from a parsed HF config dict; ``source`` names the file in errors."""

        def need(key: str) -> Any:
            if key not in cfg:
                raise ConfigError(f"{source}: required field '{key}' is missing")
            return cfg[key]

        model_type = need("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"{source}: unknown model_type '{model_type}'; supported: {SUPPORTED_MODEL_TYPES}")
        architectures = cfg.get("architectures") or ["LlamaForCausalLM" if model_type == "llama"
                                                      else "Qwen2ForCausalLM"]
        arch = architectures[0]
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ConfigError(f"{source}: unsupported architecture '{arch}'; supported: "
                              f"{sorted(SUPPORTED_ARCHITECTURES)}")
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise ConfigError(f"{source}: hidden_act '{act}' is not supported (only 'silu')")
        if cfg.get("mlp_bias", False):
            raise ConfigError(f"{source}: mlp_bias=true is not supported")
        if model_type == "qwen2" and cfg.get("use_sliding_window", False):
            raise ConfigError(f"{source}: use_sliding_window=true is not supported")
        num_heads = int(need("num_attention_heads"))
        hidden = int(need("hidden_size"))
        head_dim = cfg.get("head_dim") or hidden // num_heads
        num_kv = int(cfg.get("num_key_value_heads") or num_heads)
        if num_heads % num_kv:
            raise ConfigError(f"{source}: num_attention_heads={num_heads} is not a multiple of "
                              f"num_key_value_heads={num_kv}")
        num_labels = 0
        if arch.endswith("ForSequenceClassification"):
            num_labels = int(cfg.get("num_labels") or len(cfg.get("id2label") or {}) or 2)
        attention_bias = bool(cfg.get("attention_bias", False))
        return cls(
            model_type=model_type,
            vocab_size=int(need("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(need("intermediate_size")),
            num_layers=int(need("num_hidden_layers")),
            num_heads=num_heads,
            num_kv_heads=num_kv,
            head_dim=int(head_dim),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope=_rope_from_hf(cfg, source),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=model_type == "qwen2" or attention_bias,
            o_bias=model_type == "llama" and attention_bias,
            num_labels=num_labels,
            pad_token_id=cfg.get("pad_token_id"),
            hf_config=dict(cfg),
        )

    @classmethod
    def from_pretrained(cls, hf_dir: str | pathlib.Path) -> "ModelConfig":
        path = pathlib.Path(hf_dir) / "config.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no config.json in the model directory")
        try:
            cfg = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: invalid JSON ({e})") from e
        return cls.from_hf_dict(cfg, source=str(path))


def _rope_from_hf(cfg: dict[str, Any], source: str) -> RopeConfig:
    """Read RoPE from transformers 5 ``rope_parameters`` or 4.x ``rope_theta``/``rope_scaling``."""
    params = dict(cfg.get("rope_parameters") or {})
    scaling = cfg.get("rope_scaling") or {}
    if not params:
        params = dict(scaling)
        if "rope_theta" not in cfg:
            raise ConfigError(f"{source}: neither rope_parameters.rope_theta nor rope_theta is set")
        params["rope_theta"] = cfg["rope_theta"]
    if "rope_theta" not in params:
        if "rope_theta" not in cfg:
            raise ConfigError(f"{source}: rope_parameters has no rope_theta")
        params["rope_theta"] = cfg["rope_theta"]
    rope_type = params.get("rope_type", params.get("type", "default")) or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(f"{source}: rope type '{rope_type}' is not supported; supported: "
                          f"{SUPPORTED_ROPE_TYPES}")
    if cfg.get("partial_rotary_factor", params.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ConfigError(f"{source}: partial_rotary_factor != 1 is not supported")
    kwargs: dict[str, Any] = {"theta": float(params["rope_theta"]), "rope_type": rope_type}
    if rope_type in ("llama3", "linear"):
        kwargs["factor"] = float(params["factor"])
    if rope_type == "llama3":
        kwargs.update(
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position_embeddings=int(params["original_max_position_embeddings"]),
        )
    return RopeConfig(**kwargs)
