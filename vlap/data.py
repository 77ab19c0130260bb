"""Image-caption data for training and evaluation, read with the `datasets` library.

Sources: an image folder with metadata.jsonl/csv ("imagefolder"), a jsonl/csv file of image path + caption(s), a
dataset saved with `save_to_disk` or a Hub dataset, and webdataset tar shards (streamed). Images are decoded by us,
not by `datasets`, so a corrupt file is counted and skipped instead of stopping the run.
"""

import glob
import io
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image

from modeling_vlap.processing_vlap import open_image, to_rgb

FORMATS = ("auto", "imagefolder", "json", "csv", "disk", "hub", "webdataset")


def detect_format(source: str) -> str:
    path = Path(source)
    if source.endswith(".tar") or glob.glob(os.path.join(source, "*.tar")) or "*" in source:
        return "webdataset"
    if path.is_dir():
        if (
            (path / "dataset_info.json").exists()
            or (path / "state.json").exists()
            or (path / "dataset_dict.json").exists()
        ):
            return "disk"
        return "imagefolder"
    if path.suffix in (".jsonl", ".json"):
        return "json"
    if path.suffix == ".csv":
        return "csv"
    if path.exists():
        raise ValueError(f"{source}: unknown data file type (expected a folder, .jsonl/.json, .csv or .tar shards)")
    return "hub"


def load_source(source: str, data_format: str = "auto", split: str = "train"):
    """A `datasets.Dataset` (or a streamed `IterableDataset` for webdataset shards) and the folder image paths
    are relative to (json/csv files)."""
    if data_format not in FORMATS:
        raise ValueError(f"data format {data_format!r} is not one of {FORMATS}")
    if Path(source).exists() and not (Path(source).is_dir() or Path(source).is_file()):
        raise ValueError(f"{source}: not a regular file or folder (a FIFO, device or socket)")
    data_format = detect_format(source) if data_format == "auto" else data_format
    base_dir = None
    if data_format == "imagefolder":
        irregular = [path for path in Path(source).rglob("*") if not (path.is_dir() or path.is_file())]
        if irregular:  # datasets would open a FIFO and wait on it forever
            raise ValueError(f"{irregular[0]}: not a regular file (a FIFO, device or socket in the image folder)")
        dataset = datasets.load_dataset("imagefolder", data_dir=source, split=split)
    elif data_format in ("json", "csv"):
        try:
            dataset = datasets.load_dataset(data_format, data_files=source, split="train")
        except ValueError as error:  # datasets: 'Instruction "train" corresponds to no data!'
            raise ValueError(f"{source}: the dataset is empty or unreadable as {data_format} ({error})") from None
        base_dir = str(Path(source).resolve().parent)
    elif data_format == "disk":
        dataset = datasets.load_from_disk(source)
        if isinstance(dataset, datasets.DatasetDict):
            dataset = dataset[split]
    elif data_format == "webdataset":
        pattern = os.path.join(source, "*.tar") if Path(source).is_dir() else source
        dataset = datasets.load_dataset("webdataset", data_files={"train": pattern}, split="train", streaming=True)
    else:
        dataset = datasets.load_dataset(source, split=split)
    return dataset, base_dir


def validate(dataset, source: str, image_column: str, caption_column: str) -> None:
    """Fail before the first step on missing columns, an empty dataset or an empty caption (naming the row)."""
    columns = list(dataset.features or {})
    if isinstance(dataset, datasets.IterableDataset):
        first = next(iter(dataset), None)
        if first is None:
            raise ValueError(f"{source}: the dataset is empty")
        columns = list(first)
    for column in (image_column, caption_column):
        if column not in columns:
            raise ValueError(f"{source}: no column {column!r} (columns: {', '.join(columns)})")
    if isinstance(dataset, datasets.IterableDataset):
        return
    if len(dataset) == 0:
        raise ValueError(f"{source}: the dataset is empty")
    for row, captions in enumerate(dataset[caption_column]):
        if not caption_list(captions):
            raise ValueError(f"{source}: row {row} has no non-empty caption in column {caption_column!r}")


def caption_list(value) -> list[str]:
    """A caption cell (string or list of strings) -> its non-empty captions (none for anything else: a number,
    null, a mapping)."""
    values = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else []
    return [v.strip() for v in values if isinstance(v, str) and v.strip()]


def decode_image(value, base_dir: str | None) -> Image.Image | None:
    """A datasets Image cell ({"bytes", "path"}), a PIL image or a path -> RGB image (the processor's conversion,
    `to_rgb`), or None if unreadable or over the decompression-bomb limit."""
    try:
        if isinstance(value, Image.Image):
            return to_rgb(value)
        name = None
        if isinstance(value, dict):
            name = value.get("path")
            value = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
        if isinstance(value, str) and base_dir is not None and not os.path.isabs(value):
            value = os.path.join(base_dir, value)
        return open_image(value, name)
    except (ValueError, KeyError, TypeError):
        return None


def undecoded_images(dataset, image_column: str):
    """Keep a datasets Image column as {"bytes", "path"} cells, so `decode_image` (not datasets) opens each one and a
    corrupt file is skipped instead of stopping the iteration. Streamed datasets are returned as they are."""
    features = getattr(dataset, "features", None) or {}
    if not isinstance(dataset, datasets.IterableDataset) and isinstance(features.get(image_column), datasets.Image):
        return dataset.cast_column(image_column, datasets.Image(decode=False))
    return dataset


class CaptionedImages(torch.utils.data.Dataset):
    """Map-style view of a `datasets.Dataset`: item i -> {"index", "image" (RGB or None), "caption"}.

    A row with several captions yields one per visit, drawn from (seed, epoch, row): reproducible and resumable.
    With `features` (a FeatureCache) the image is replaced by its cached frozen vision output.
    """

    def __init__(self, dataset, image_column: str, caption_column: str, base_dir=None, seed: int = 0, features=None):
        dataset = undecoded_images(dataset, image_column)
        self.dataset, self.image_column, self.caption_column = dataset, image_column, caption_column
        self.base_dir, self.seed, self.epoch, self.features = base_dir, seed, 0, features

    def describe_rows(self, rows, limit: int = 10) -> str:
        """ "row 3 (images/0003.png), ...": the first `limit` rows with the file each image came from, when known."""
        described = []
        for row in sorted(rows)[:limit]:
            cell = self.dataset[row][self.image_column]
            name = cell.get("path") if isinstance(cell, dict) else cell if isinstance(cell, str) else None
            described.append(f"row {row} ({name})" if name else f"row {row}")
        return ", ".join(described)

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def image(self, index: int) -> Image.Image | None:
        return decode_image(self.dataset[index][self.image_column], self.base_dir)

    def __getitem__(self, index: int) -> dict:
        captions = caption_list(self.dataset[index][self.caption_column])
        choice = np.random.default_rng([self.seed, self.epoch, index]).integers(len(captions))
        item = {"index": index, "caption": captions[choice]}
        features = self.features[index] if self.features is not None else None
        if features is not None:
            item["vision_hidden_states"] = features
        else:
            item["image"] = None if self.features is not None else self.image(index)
        return item


class StreamedCaptionedImages(torch.utils.data.IterableDataset):
    """Iterable view of a streamed dataset (webdataset shards): same items as CaptionedImages, shuffled by buffer."""

    def __init__(self, dataset, image_column: str, caption_column: str, seed: int = 0, shuffle_buffer: int = 1000):
        self.dataset, self.image_column, self.caption_column = dataset, image_column, caption_column
        self.seed, self.epoch, self.shuffle_buffer = seed, 0, shuffle_buffer

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        stream = self.dataset.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
        stream.set_epoch(self.epoch)
        for index, row in enumerate(stream):
            captions = caption_list(row[self.caption_column])
            if not captions:
                raise ValueError(f"streamed row {index} (key {row.get('__key__')!r}) has no non-empty caption")
            choice = np.random.default_rng([self.seed, self.epoch, index]).integers(len(captions))
            yield {"index": index, "caption": captions[choice], "image": decode_image(row[self.image_column], None)}


@dataclass
class Collator:
    """Items -> model inputs; unreadable images are dropped from the batch, their rows listed in "bad_rows"."""

    processor: object
    max_caption_length: int = 64

    def __call__(self, items: list[dict]) -> dict:
        def usable(item: dict) -> bool:
            return item.get("image") is not None or "vision_hidden_states" in item

        good = [item for item in items if usable(item)]
        bad_rows = [item["index"] for item in items if not usable(item)]
        if not good:
            return {"bad_rows": bad_rows, "num_items": len(items)}
        captions = [item["caption"] for item in good]
        if "vision_hidden_states" in good[0]:
            batch = dict(self.processor(text=captions, max_length=self.max_caption_length))
            batch.update(self.processor.prompt_inputs(len(good)))
            batch["vision_hidden_states"] = torch.stack([item["vision_hidden_states"] for item in good])
        else:
            images = [item["image"] for item in good]
            batch = dict(self.processor(images=images, text=captions, max_length=self.max_caption_length))
        batch.update(bad_rows=bad_rows, num_items=len(items))
        return batch


def caption_token_counts(captions, processor, vocab_size: int, max_length: int | None = None) -> torch.Tensor:
    """Caption token frequencies as training sees them (tokenised after the prompt, truncated to `max_length` tokens
    with EOS appended, as `processor(text=..., max_length=...)` does): `[vocab_size]`."""
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    eos = processor.tokenizer.eos_token_id
    for start in range(0, len(captions), 1024):
        for ids in processor.caption_token_ids(captions[start : start + 1024]):
            kept = ids if max_length is None else ids[: max_length - 1]
            counts += torch.bincount(torch.tensor(kept + [eos]), minlength=vocab_size).double()
    return counts
