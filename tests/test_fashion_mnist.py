"""Fashion-MNIST from Debian's idx files: the reader on hand-written files, captions, and a held-out split that
never leaks a held-out class into training."""

import gzip
import struct

import numpy as np
import pytest

from experiments.fashion_mnist import CLASSES, FILES, fashion_mnist_dataset, read_idx, split_dataset, without_classes
from vlap.evaluation import named_class


def idx_bytes(array: np.ndarray) -> bytes:
    """An idx file written by hand from the format's definition: 0, 0, type 0x08 (uint8), ndim; big-endian dims."""
    return (
        bytes([0, 0, 0x08, array.ndim])
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.astype(np.uint8).tobytes()
    )


def write_fake_source(folder, images_per_split: int = 30, seed: int = 0):
    """The four gzipped idx files Debian installs, with random 28x28 images and labels cycling over the 10 classes."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(seed)
    for images_name, labels_name in FILES.values():
        images = generator.integers(0, 256, (images_per_split, 28, 28), dtype=np.uint8)
        labels = np.arange(images_per_split, dtype=np.uint8) % 10
        (folder / images_name).write_bytes(gzip.compress(idx_bytes(images)))
        (folder / labels_name).write_bytes(gzip.compress(idx_bytes(labels)))
    return folder


def test_read_idx_on_hand_written_files(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4])  # the header spelled out byte by byte
    plain, packed = tmp_path / "x-idx3-ubyte", tmp_path / "x-idx3-ubyte.gz"
    plain.write_bytes(header + array.tobytes())
    packed.write_bytes(gzip.compress(header + array.tobytes()))
    for path in (plain, packed):
        np.testing.assert_array_equal(read_idx(path), array)
    labels = tmp_path / "labels-idx1-ubyte"
    labels.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 0, 9]))
    assert read_idx(labels).tolist() == [7, 0, 9]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x00\x00\x08", "not an idx file"),  # too short
        (b"PK\x03\x04" + bytes(20), "not an idx file"),  # another format
        (bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]), "needs 13"),  # 5 values announced, 2 present
    ],
)
def test_read_idx_names_the_file_on_bad_content(tmp_path, content, message):
    path = tmp_path / "broken-idx1-ubyte"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as error:
        read_idx(path)
    assert str(path) in str(error.value)


def test_missing_files_name_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setenv("VLAP_FASHION_MNIST", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist_dataset(tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # nothing half-built is left behind


def test_dataset_images_labels_and_captions(tmp_path):
    source = write_fake_source(tmp_path / "source")
    train = split_dataset(source, "train")
    raw = read_idx(source / FILES["train"][0])
    assert train.features["label"].names == list(CLASSES) and len(train) == 30
    for row in range(12):
        item = train[row]
        np.testing.assert_array_equal(np.asarray(item["image"]), 255 - raw[row])  # stored dark on white
        assert len(item["caption"]) == 4
        assert all(named_class(caption, CLASSES) == item["label"] for caption in item["caption"])
    assert "an ankle boot" in train[9]["caption"] and "a sandal" in train[5]["caption"]


def test_held_out_split_holds_no_held_out_image_or_caption(tmp_path):
    train = split_dataset(write_fake_source(tmp_path / "source", images_per_split=50), "train")
    kept = without_classes(train, ["sandal", "bag"])
    held = {CLASSES.index("sandal"), CLASSES.index("bag")}
    assert len(kept) == 40 and held.isdisjoint(kept["label"])
    assert not any(named_class(c, CLASSES) in held for captions in kept["caption"] for c in captions)
    assert not any(word in c for captions in kept["caption"] for c in captions for word in ("sandal", "bag"))
    with pytest.raises(ValueError, match="not a Fashion-MNIST class"):
        without_classes(train, ["sandals"])


@pytest.mark.parametrize(
    "caption, expected",
    [
        ("a photo of a t-shirt", "t-shirt"),
        ("a shirt with a collar", "shirt"),
        ("two sneakers and a bag", "sneaker"),
        ("an ankle boot", "ankle boot"),
        ("a boot", None),
        ("a pair of trousers", "pair of trousers"),
        ("A Dress.", "dress"),
        ("a sweatshirt", None),
        ("", None),
    ],
)
def test_named_class_is_the_first_class_a_caption_names(caption, expected):
    found = named_class(caption, CLASSES)
    assert (CLASSES[found] if found is not None else None) == expected


def test_the_debian_files_when_installed():
    from experiments.fashion_mnist import DEBIAN_FOLDER, source_folder

    try:
        folder = source_folder()
    except FileNotFoundError:
        pytest.skip(f"Debian's dataset-fashion-mnist is not installed ({DEBIAN_FOLDER}); `make` installs it with apt")
    for split, count in (("train", 60000), ("test", 10000)):
        images, labels = (read_idx(folder / name) for name in FILES[split])
        assert images.shape == (count, 28, 28) and images.dtype == np.uint8
        assert np.bincount(labels).tolist() == [count // 10] * 10


def test_seed_summary_states_median_spread_and_separation(tmp_path):
    import json

    from experiments.demo import summarise_seeds

    folders = []
    for seed, (vlap, caption_only) in enumerate([(0.8, 0.1), (0.9, 0.3), (0.7, 0.2)]):
        folder = tmp_path / f"seed{seed}"
        folder.mkdir()
        scores = {"classification": vlap, "caption_names_class": 0.5 + seed / 10}
        baseline = {"classification": caption_only, "caption_names_class": 0.55}
        (folder / "results.json").write_text(
            json.dumps({"setup": {"seed": seed}, "vlap": {"scores": scores}, "caption_only": {"scores": baseline}})
        )
        folders.append(folder)
    summary = summarise_seeds(folders)
    assert "| classification | 0.800 [0.700, 0.900] | 0.200 [0.100, 0.300] | +0.600 (exceeds the spread) |" in summary
    assert (
        "| caption_names_class | 0.600 [0.500, 0.700] | 0.550 [0.550, 0.550] | +0.050 (within the spread) |" in summary
    )


def test_demo_refuses_an_unknown_held_out_class_before_anything_is_written(tmp_path, capsys):
    from experiments.demo import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--dataset", "fashion-mnist", "--held-out", "sandals,bag", "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2 and "--held-out sandals: not a Fashion-MNIST class" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
