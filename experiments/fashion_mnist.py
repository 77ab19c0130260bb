"""Fashion-MNIST (Zalando, MIT) as a `datasets` dataset of captioned product photos, read from Debian's files.

`apt-get install dataset-fashion-mnist` puts the original gzipped idx files in /usr/share/datasets/fashion-mnist/
(`$VLAP_FASHION_MNIST` points elsewhere): 60,000 train / 10,000 test 28x28 greyscale photos of 10 classes. Images
are stored inverted, dark product on a white background as a catalogue photo shows it (the idx files hold white on
black). Captions name the class in a few natural templates; `without_classes` removes classes for the held-out
experiment (images and captions both).
"""

import gzip
import os
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

DEBIAN_FOLDER = "/usr/share/datasets/fashion-mnist"
# The dataset's 10 labels, in label order, as a caption names them.
CLASSES = (
    "t-shirt",
    "pair of trousers",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
TEMPLATES = ("a photo of {}", "{}", "a black and white photo of {}", "a product photo of {}")  # {}: "an ankle boot"
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """An idx file (LeCun's MNIST format, gzipped or not) as an array: 2 zero bytes, a type code, the number of
    dimensions, one big-endian uint32 per dimension, then the values. A wrong header or length names the file."""
    path = Path(path)
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in IDX_DTYPES:
        raise ValueError(f"{path}: not an idx file (header {data[:4].hex() or 'empty'})")
    dims = data[3]
    shape = tuple(int(n) for n in np.frombuffer(data, ">u4", count=dims, offset=4))
    dtype = np.dtype(IDX_DTYPES[data[2]])
    expected = 4 + 4 * dims + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"{path}: {len(data)} bytes, the header {shape} of {dtype} needs {expected}")
    return np.frombuffer(data, dtype, offset=4 + 4 * dims).reshape(shape)


def source_folder() -> Path:
    folder = Path(os.environ.get("VLAP_FASHION_MNIST", DEBIAN_FOLDER))
    missing = [name for names in FILES.values() for name in names if not (folder / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {folder} (missing {', '.join(missing)}): install Debian's "
            "package with `apt-get install dataset-fashion-mnist`, or set VLAP_FASHION_MNIST to a "
            "folder holding the idx files"
        )
    return folder


def split_dataset(folder: Path, split: str) -> datasets.Dataset:
    images, labels = (read_idx(folder / name) for name in FILES[split])
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise ValueError(f"{folder}: {split} images {images.shape} do not match labels {labels.shape}")
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=list(CLASSES)),
            "caption": datasets.Sequence(datasets.Value("string")),
        }
    )
    rows = {
        "image": [Image.fromarray(255 - image) for image in images],  # dark on white, as a catalogue photo
        "label": labels.tolist(),
        "caption": [[template.format(with_article(CLASSES[label])) for template in TEMPLATES] for label in labels],
    }
    return datasets.Dataset.from_dict(rows, features=features)


def fashion_mnist_dataset(root: Path) -> Path:
    """Build once (train and test) under `root` and return the `save_to_disk` folder."""
    folder = root / "fashion-mnist"
    if (folder / "dataset_dict.json").exists():
        return folder
    source = source_folder()
    dataset = datasets.DatasetDict({split: split_dataset(source, split) for split in FILES})
    dataset.save_to_disk(str(folder))
    return folder


def with_article(name: str) -> str:
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def class_index(name: str) -> int:
    if name not in CLASSES:
        raise ValueError(f"{name!r} is not a Fashion-MNIST class ({', '.join(CLASSES)})")
    return CLASSES.index(name)


def without_classes(dataset: datasets.Dataset, held_out) -> datasets.Dataset:
    """The rows whose label is not held out: neither their images nor their captions are seen in training."""
    removed = {class_index(name) for name in held_out}
    return dataset.filter(
        lambda labels: [label not in removed for label in labels], input_columns="label", batched=True
    )
