"""Prompt batches for training: deterministic shuffling, resumable position.

``PromptSource`` reads any random-access collection of records: a list from
``load_jsonl`` or the TensorFlow Datasets data source built here from local
JSONL. The tfds path needs no TensorFlow: the builder writes ``array_record``
files and ``as_data_source()`` reads them back by index (checked on this
project's CPU machines with tensorflow-datasets 4.9.10 and array-record 0.8.6;
TensorFlow is never imported). tfds 4.9.10 also needs ``importlib_resources``
to prepare a builder defined inside a package, though it declares that
dependency only for Python < 3.9.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np

from alphaalign_jax.data.records import FIELDS, PromptRecord, load_jsonl

STATE_VERSION = 1
# Everyday benign requests unlike the training prompts (creative writing, recipes, translation,
# summaries, how-to questions with alarming verbs), written for this project and never trained
# on: an over-refusal probe, `evaluate --probe` (tests/test_scaffold.py keeps it apart).
EVERYDAY_BENIGN_FILE = Path(__file__).with_name("everyday_benign.jsonl")


def _fingerprint(data: Sequence[PromptRecord]) -> str:
    """Identifies the dataset and its order, so a position is never restored onto other data."""
    digest = hashlib.sha256()
    for i in range(len(data)):
        digest.update(data[i].id.encode("utf-8") + b"\0")
    return digest.hexdigest()[:16]


class PromptSource(Iterator[list[PromptRecord]]):
    """Endless (or ``num_epochs``-long) batches of ``batch_size`` prompts.

    Epoch e visits the records in the order of a permutation drawn from
    ``np.random.default_rng([seed, e])``, so the order depends only on the seed
    and the epoch, never on how often the program was restarted. The epochs
    form one stream and a batch may span the end of one epoch and the start of
    the next, so no prompt is ever skipped. ``state()`` after a batch and
    ``restore()`` in a new process continue with exactly the next batch.
    """

    def __init__(
        self,
        data: Sequence[PromptRecord],
        batch_size: int,
        seed: int = 0,
        num_epochs: int | None = None,
        drop_remainder: bool = True,
    ) -> None:
        """``num_epochs=None`` never stops; with a number, the final short batch
        is dropped if ``drop_remainder`` (fixed shapes for jit), else yielded."""
        if len(data) == 0:
            raise ValueError("no prompts to iterate over")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_epochs is not None and num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1 or None, got {num_epochs}")
        self._data = data
        self.batch_size = batch_size
        self.seed = seed
        self.num_epochs = num_epochs
        self.drop_remainder = drop_remainder
        self._fingerprint = _fingerprint(data)
        self._epoch = 0
        self._index = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self._data))

    @property
    def epoch(self) -> int:
        """The epoch the next prompt comes from."""
        return self._epoch

    def __next__(self) -> list[PromptRecord]:
        batch: list[PromptRecord] = []
        while len(batch) < self.batch_size:
            if self.num_epochs is not None and self._epoch >= self.num_epochs:
                break
            take = self._order[self._index : self._index + self.batch_size - len(batch)]
            batch += [self._data[int(i)] for i in take]
            self._index += len(take)
            if self._index == len(self._order):
                self._epoch += 1
                self._index = 0
                self._order = self._permutation(self._epoch)
        if not batch or (len(batch) < self.batch_size and self.drop_remainder):
            raise StopIteration
        return batch

    def state(self) -> dict[str, Any]:
        """The position as a JSON-serialisable dict, to store with a checkpoint."""
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "epoch": self._epoch,
            "index": self._index,
            "num_records": len(self._data),
            "fingerprint": self._fingerprint,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a ``state()``.

        Raises:
          ValueError: the state is from another dataset, order or seed, where
            resuming would silently feed different prompts.
        """
        expected = {
            "version": STATE_VERSION,
            "seed": self.seed,
            "num_records": len(self._data),
            "fingerprint": self._fingerprint,
        }
        mismatched = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
        if mismatched:
            raise ValueError(f"state does not fit this prompt source (saved, current): {mismatched}")
        epoch, index = int(state["epoch"]), int(state["index"])
        if epoch < 0 or not 0 <= index < len(self._data):
            raise ValueError(f"position out of range: epoch {epoch}, index {index}")
        self._epoch, self._index = epoch, index
        self._order = self._permutation(epoch)


# --- TensorFlow Datasets: local JSONL -> array_record -> random-access source ---

_builder_class: type | None = None


def _tfds_builder_class() -> type:
    """The tfds builder, defined on first use so tfds is imported only when wanted
    (and registered once: tfds refuses a second builder of the same name)."""
    global _builder_class
    if _builder_class is not None:
        return _builder_class
    import tensorflow_datasets as tfds

    class AlphaalignPrompts(tfds.core.GeneratorBasedBuilder):
        """Prompt records from local JSONL files, one split per file (tfds name
        ``alphaalign_prompts``, from the class name)."""

        VERSION = tfds.core.Version("1.1.0")
        RELEASE_NOTES = {"1.0.0": "prompt, label, source, id",  # noqa: RUF012 (tfds API)
                         "1.1.0": "records in file order"}

        def __init__(self, *, jsonl_files: Mapping[str, str], lenient: bool = False, **kwargs: Any):
            self._jsonl_files = dict(jsonl_files)
            self._lenient = lenient
            super().__init__(**kwargs)

        def _info(self) -> Any:
            # Keys are file positions and shuffling is off, so record i is the file's i-th
            # record: the trainer draws the same prompts from tfds as from the JSONL.
            # Built directly: dataset_info_from_configs would look for metadata
            # files next to this module.
            return tfds.core.DatasetInfo(
                builder=self,
                description="AlphaAlign prompts with a binary harmful/benign label.",
                features=tfds.features.FeaturesDict({name: tfds.features.Text() for name in FIELDS}),
                disable_shuffling=True,
            )

        def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
            return {split: self._generate_examples(path) for split, path in self._jsonl_files.items()}

        def _generate_examples(self, path: str) -> Iterator[tuple[str, dict[str, str]]]:
            for position, record in enumerate(load_jsonl(path, self._lenient)):
                yield position, record.to_json()

    _builder_class = AlphaalignPrompts
    return _builder_class


class _RecordView(Sequence[PromptRecord]):
    """Random access to records; a subclass gives ``__len__`` and ``_record(i)`` for
    ``0 <= i < len``, and gets negative indices and slices from here."""

    def _record(self, index: int) -> PromptRecord:
        raise NotImplementedError

    @overload
    def __getitem__(self, index: int) -> PromptRecord: ...
    @overload
    def __getitem__(self, index: slice) -> list[PromptRecord]: ...
    def __getitem__(self, index: int | slice) -> PromptRecord | list[PromptRecord]:
        if isinstance(index, slice):
            return [self._record(i) for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        return self._record(index % len(self))


class Subset(_RecordView):
    """A view of some records of a random-access collection, by index (read on access)."""

    def __init__(self, data: Sequence[PromptRecord], indices: Sequence[int]) -> None:
        if isinstance(data, Subset):  # a view of a view reads the underlying data directly
            data, indices = data._data, [data._indices[i] for i in indices]
        self._data, self._indices = data, list(indices)

    def __len__(self) -> int:
        return len(self._indices)

    def _record(self, index: int) -> PromptRecord:
        return self._data[self._indices[index]]


class TfdsPrompts(_RecordView):
    """A tfds ``ArrayRecordDataSource`` read back as ``PromptRecord``s."""

    def __init__(self, source: Any) -> None:
        self._source = source

    def __len__(self) -> int:
        return len(self._source)

    def _record(self, index: int) -> PromptRecord:
        row = self._source[index]
        return PromptRecord(**{name: row[name].decode("utf-8") for name in FIELDS})


def build_tfds_prompts(
    jsonl_files: Mapping[str, str | os.PathLike[str]],
    data_dir: str | os.PathLike[str],
    lenient: bool = False,
) -> dict[str, TfdsPrompts]:
    """Prepare (once) and open a tfds dataset with one split per JSONL file.

    The prepared files live under ``data_dir/<hash of the inputs>/`` so that a
    changed JSONL is prepared anew instead of reusing stale records. Bad rows
    raise ``DataError`` (file:line) unless ``lenient``, as in ``load_jsonl``.

    Returns:
      split name -> random-access records, in the order of their file
      (``PromptSource`` does the shuffling).
    """
    files = {split: str(Path(path).resolve()) for split, path in sorted(jsonl_files.items())}
    digest = hashlib.sha256(repr(lenient).encode())
    for split, path in files.items():
        digest.update(f"{split}\0{path}\0".encode() + Path(path).read_bytes())
    builder = _tfds_builder_class()(
        jsonl_files=files,
        lenient=lenient,
        data_dir=str(Path(data_dir) / digest.hexdigest()[:16]),
        file_format="array_record",
    )
    builder.download_and_prepare()
    sources = builder.as_data_source()
    return {split: TfdsPrompts(sources[split]) for split in files}


def bundled_splits(data_dir: str | os.PathLike[str]) -> dict[str, TfdsPrompts]:
    """The split files of ``data_dir`` (``train``, ``eval_harmful``, ``eval_overrefusal``,
    as written by ``fetch_datasets``) as one tfds dataset under ``data_dir/tfds``; setup
    prepares it, later calls open it."""
    from alphaalign_jax.data.splits import SPLIT_FILES

    data_dir = Path(data_dir)
    return build_tfds_prompts({name: data_dir / f"{name}.jsonl" for name in SPLIT_FILES},
                              data_dir / "tfds")


@dataclasses.dataclass
class BalancedPrompts:
    """Class-balanced prompt batches from two resumable, deterministic streams."""

    harmful: PromptSource | None
    benign: PromptSource | None
    num_harmful: int
    num_benign: int

    @classmethod
    def build(cls, records: Sequence[PromptRecord], labels: Sequence[str], batch: int,
              harmful_fraction: float, seed: int, origin: str) -> BalancedPrompts:
        """Two label views of ``records`` (random access, nothing copied)."""
        by_label = {lab: Subset(records, [i for i, x in enumerate(labels) if x == lab])
                    for lab in ("harmful", "benign")}
        num_harmful = round(batch * harmful_fraction)
        num_benign = batch - num_harmful
        for label, n in (("harmful", num_harmful), ("benign", num_benign)):
            if n and not by_label[label]:
                raise ValueError(f"config.data.harmful_fraction asks for {n} {label} prompts a "
                                 f"step, but {origin} has none")
        return cls(
            PromptSource(by_label["harmful"], num_harmful, seed=seed) if num_harmful else None,
            PromptSource(by_label["benign"], num_benign, seed=seed + 1) if num_benign else None,
            num_harmful, num_benign)

    def next(self) -> list[PromptRecord]:
        return ((next(self.harmful) if self.harmful else [])
                + (next(self.benign) if self.benign else []))

    def state(self) -> dict[str, Any]:
        return {"harmful": self.harmful.state() if self.harmful else None,
                "benign": self.benign.state() if self.benign else None}

    def restore(self, state: dict[str, Any]) -> None:
        for name in ("harmful", "benign"):
            source = getattr(self, name)
            if source is not None:
                source.restore(state[name])
