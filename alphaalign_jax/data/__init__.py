"""Safety prompt data: records, real sources from PyPI wheels, fixed splits, batching."""

from alphaalign_jax.data.pipeline import PromptSource, TfdsPrompts, build_tfds_prompts
from alphaalign_jax.data.records import (
    DataError,
    JsonlLoad,
    PromptRecord,
    SkippedRow,
    load_jsonl,
    read_jsonl,
    write_jsonl,
)
from alphaalign_jax.data.sources import (
    SOURCES,
    FetchError,
    WheelSource,
    fetch_datasets,
)
from alphaalign_jax.data.splits import (
    NEAR_DUP_JACCARD,
    PARAPHRASE_JACCARD,
    SPLIT_POLICIES,
    SplitPolicy,
    SplitResult,
    build_splits,
    near_duplicate_pairs,
    write_splits,
)

__all__ = [
    "NEAR_DUP_JACCARD",
    "PARAPHRASE_JACCARD",
    "SOURCES",
    "SPLIT_POLICIES",
    "DataError",
    "FetchError",
    "JsonlLoad",
    "PromptRecord",
    "PromptSource",
    "SkippedRow",
    "SplitPolicy",
    "SplitResult",
    "TfdsPrompts",
    "WheelSource",
    "build_splits",
    "build_tfds_prompts",
    "fetch_datasets",
    "load_jsonl",
    "near_duplicate_pairs",
    "read_jsonl",
    "write_jsonl",
    "write_splits",
]
