"""train.py end to end on tiny models: resume after SIGKILL, 2 processes vs 1, feature cache, data sources."""

import dataclasses
import io
import json
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import datasets
import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from tiny import ENV, load_in_fresh_process, run_train, shape_image, write_config

from train import find_checkpoint
from vlap.data import CaptionedImages, Collator, StreamedCaptionedImages, load_source, validate
from vlap.features import build_feature_cache

REPO = Path(__file__).resolve().parent.parent


def metrics(output_dir: Path) -> list[dict]:
    lines = (output_dir / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if "loss" in record]


def bridge(output_dir: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(output_dir / "final" / "model.safetensors").items() if k.startswith("bridge.")}


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(backbones, caption_folder, tmp_path):
    reference = tmp_path / "reference"
    run_train(
        write_config(tmp_path / "a.yaml", backbones, caption_folder, reference, max_steps=40, checkpointing_steps=5)
    )

    killed = tmp_path / "killed"
    config = write_config(tmp_path / "b.yaml", backbones, caption_folder, killed, max_steps=40, checkpointing_steps=5)
    process = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), "--config", str(config)],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step-5" / "progress.json").exists():
        assert process.poll() is None and time.time() < deadline, "training ended before its first checkpoint"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "final").exists(), "the run finished before the kill: nothing was tested"
    # What a kill during save_state leaves behind must never be taken as the latest checkpoint.
    (killed / "checkpoints" / ".partial-step-999").mkdir()
    (killed / "checkpoints" / "step-1000").mkdir()
    (killed / "checkpoints" / "step-1000" / "model.safetensors").write_bytes(b"half written")
    latest = find_checkpoint(killed / "checkpoints", "latest")
    assert latest is not None and int(latest.name.split("-")[1]) <= 40

    run_train(config, "--resume")  # bare --resume means the latest complete checkpoint
    for name, tensor in bridge(reference).items():
        assert (tensor - bridge(killed)[name]).abs().max() <= 1e-6, name
    steps = [record["step"] for record in metrics(killed)]
    assert steps == list(range(1, 41))  # the log keeps one record per step across the kill
    assert [r["loss"] for r in metrics(killed)] == pytest.approx([r["loss"] for r in metrics(reference)], abs=1e-5)


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(backbones, caption_folder, tmp_path):
    one = tmp_path / "one"
    run_train(write_config(tmp_path / "one.yaml", backbones, caption_folder, one, batch_size=8, max_steps=6))
    two = tmp_path / "two"
    # torchrun-style launch of 2 processes; `cpu: true` in the config makes them CPU processes talking over gloo.
    launcher = (
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    )
    run_train(
        write_config(tmp_path / "two.yaml", backbones, caption_folder, two, batch_size=4, max_steps=6),
        launcher=launcher,
    )
    one_log, two_log = metrics(one), metrics(two)
    assert len(one_log) == len(two_log) == 6
    # Same weights, same 8 images: the assignment loss (a per-sample mean whose Sinkhorn marginal spans both
    # processes) agrees to float precision at step 1. The caption loss is a token mean per process, averaged over
    # processes, so rows weigh slightly differently from the 1-process token mean (0.2% here) and the weights then
    # drift by a few 1e-4: the stated tolerances.
    assert two_log[0]["assignment_loss"] == pytest.approx(one_log[0]["assignment_loss"], rel=1e-6)
    for a, b in zip(one_log, two_log):
        assert b["assignment_loss"] == pytest.approx(a["assignment_loss"], rel=1e-3)
        assert b["caption_loss"] == pytest.approx(a["caption_loss"], rel=1e-2)
    for name, tensor in bridge(one).items():
        assert (tensor - bridge(two)[name]).abs().max() <= 1e-3, name


@pytest.mark.slow
def test_an_fsdp_launch_without_a_gpu_stops_with_accelerates_refusal(backbones, caption_folder, tmp_path):
    output = tmp_path / "fsdp"
    launcher = (
        *(sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--num_processes", "2"),
        *("--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"),
    )
    config = write_config(tmp_path / "fsdp.yaml", backbones, caption_folder, output, max_steps=2)
    result = run_train(config, launcher=launcher, check=False)
    assert result.returncode != 0
    # accelerate's own words (FullyShardedDataParallelPlugin without a GPU), then what to launch instead.
    assert "FSDP was requested but accelerate refuses it on this machine: There are currently no available devices" in (
        result.stderr
    )
    assert "accelerate launch --num_processes N train.py" in result.stderr
    assert 'train.py", line' not in result.stderr  # no traceback from the processes (the launcher reports their exit)
    assert not output.exists()


@pytest.mark.slow
def test_the_bridge_trains_with_the_frozen_llm_sharded_by_fsdp(backbones, tmp_path):
    """torch FSDP2 on 2 CPU processes (gloo), every LLM layer and the model sharded (tests/fsdp_bridge.py): the same
    losses and bridge as one unsharded process, and its bridge-only export loads in a fresh process."""
    script = REPO / "tests" / "fsdp_bridge.py"
    root = backbones["clip"].parent
    one, two = tmp_path / "one", tmp_path / "two"
    for command, out in (
        ([sys.executable, str(script)], one),
        ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script)], two),
    ):
        result = subprocess.run([*command, str(root), str(out)], cwd=REPO, env=ENV, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
    one_run, two_run = (json.loads((out / "losses.json").read_text()) for out in (one, two))
    assert one_run["sharded_parameters"] == []
    sharded = two_run["sharded_parameters"]
    assert "bridge.weight" in sharded and "language_model.model.decoder.embed_tokens.weight" in sharded
    assert "language_model.model.decoder.layers.1.fc1.weight" in sharded
    for a, b in zip(one_run["losses"], two_run["losses"], strict=True):
        assert b == pytest.approx(a, rel=1e-6)
    exported = [load_file(out / "final" / "model.safetensors") for out in (one, two)]
    assert sorted(exported[1]) == ["bridge.bias", "bridge.weight", "word_frequency", "word_prior"]
    for name, tensor in exported[0].items():
        assert (tensor - exported[1][name]).abs().max() <= 1e-6, name
    image = tmp_path / "shape.png"
    shape_image("green", "circle").save(image)
    settings = {"max_new_tokens": 4, "do_sample": False}
    loaded = [load_in_fresh_process(out / "final", image, settings)[0] for out in (one, two)]
    assert loaded[0]["ids"] == loaded[1]["ids"]


@pytest.mark.slow
def test_training_from_the_feature_cache_matches_training_from_images(backbones, caption_folder, tmp_path):
    from_images = tmp_path / "images"
    run_train(write_config(tmp_path / "i.yaml", backbones, caption_folder, from_images, max_steps=4))
    from_cache = tmp_path / "cache"
    run_train(
        write_config(
            tmp_path / "c.yaml",
            backbones,
            caption_folder,
            from_cache,
            max_steps=4,
            cache_features=str(tmp_path / "features"),
        )
    )
    for a, b in zip(metrics(from_images), metrics(from_cache)):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)


@pytest.mark.slow
def test_exported_model_loads_in_a_fresh_process(backbones, caption_folder, tmp_path):
    output = tmp_path / "run"
    result = run_train(
        write_config(
            tmp_path / "e.yaml",
            backbones,
            caption_folder,
            output,
            max_steps=3,
            eval_steps=3,
            validation_data=str(caption_folder),
            model={"sinkhorn_iterations": 5, "assignment_temperature": 0.05, "prompt": "A photo of"},
        )
    )
    exported = json.loads((output / "final" / "config.json").read_text())  # the model: section reaches the model
    assert (exported["sinkhorn_iterations"], exported["assignment_temperature"]) == (5, 0.05)
    assert json.loads((output / "final" / "processor_config.json").read_text())["prompt"] == "A photo of"
    evaluation = json.loads(result.stdout.split("[eval step 3] ")[1].splitlines()[0])
    assert evaluation["val_loss"] > 0 and len(evaluation["captions"]) == 4
    summary = json.loads(result.stdout.split("summary: ")[1].splitlines()[0])
    assert summary["best_val_loss"] == evaluation["val_loss"] and summary["model"] == str(output / "final")
    image = tmp_path / "photo.png"
    shape_image("red", "circle").save(image)
    loaded, _ = load_in_fresh_process(output / "final", image, {"max_new_tokens": 4, "min_new_tokens": 4})
    assert loaded["caption"].strip()


def test_feature_cache_is_keyed_by_the_vision_model(backbones, caption_folder, tmp_path):
    from modeling_vlap import VLAPForConditionalGeneration, VLAPProcessor

    dataset, _ = load_source(str(caption_folder))
    images = CaptionedImages(dataset, "image", "caption")
    accelerator = Accelerator(cpu=True)
    built = {}
    for vision in ("clip", "clip_vision", "clip"):
        model = VLAPForConditionalGeneration.from_vision_text_pretrained(str(backbones[vision]), str(backbones["t5"]))
        processor = VLAPProcessor.from_vision_text_pretrained(str(backbones[vision]), str(backbones["t5"]))
        cache = build_feature_cache(model, processor, images, tmp_path / "cache", accelerator, batch_size=5)
        pixels = processor(images=[images.image(7)])["pixel_values"]
        torch.testing.assert_close(cache[7], model.get_vision_hidden_states(pixels)[0])
        built.setdefault(vision, cache.directory)
        assert cache.directory == built[vision]
    assert built["clip"] != built["clip_vision"]  # other weights: another cache
    assert len(list((tmp_path / "cache").iterdir())) == 2


def write_sources(root: Path, folder: Path) -> dict[str, str]:
    """The same images and captions as every source format the trainer reads."""
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    root.mkdir()
    with open(root / "pairs.jsonl", "w") as jsonl:
        for row in rows:
            jsonl.write(json.dumps({"image": str(folder / row["file_name"]), "caption": row["caption"]}) + "\n")
    with open(root / "pairs.csv", "w") as csv:
        csv.write("image,caption\n" + "".join(f"{folder / r['file_name']},{r['caption'][0]}\n" for r in rows))
    datasets.load_dataset("imagefolder", data_dir=str(folder), split="train").save_to_disk(str(root / "saved"))
    (root / "shards").mkdir()
    with tarfile.open(root / "shards" / "shard-000.tar", "w") as tar:
        for i, row in enumerate(rows):
            for name, data in (
                (f"{i:04d}.png", (folder / row["file_name"]).read_bytes()),
                (f"{i:04d}.txt", row["caption"][0].encode()),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return {
        "imagefolder": str(folder),
        "json": str(root / "pairs.jsonl"),
        "csv": str(root / "pairs.csv"),
        "disk": str(root / "saved"),
        "webdataset": str(root / "shards"),
    }


def test_every_source_format_loads(caption_folder, tmp_path):
    for data_format, source in write_sources(tmp_path / "sources", caption_folder).items():
        dataset, base_dir = load_source(source)
        image_column, caption_column = ("png", "txt") if data_format == "webdataset" else ("image", "caption")
        validate(dataset, source, image_column, caption_column)
        if data_format == "webdataset":
            items = list(StreamedCaptionedImages(dataset, image_column, caption_column))
        else:
            view = CaptionedImages(dataset, image_column, caption_column, base_dir=base_dir)
            items = [view[i] for i in range(len(view))]
        assert len(items) == 24, data_format
        assert all(item["image"] is not None and item["image"].mode == "RGB" for item in items), data_format
        assert {item["caption"].split()[1] for item in items} == {"red", "green", "blue", "yellow", "black"}


def test_several_captions_are_sampled_reproducibly(caption_folder):
    dataset, _ = load_source(str(caption_folder))
    view = CaptionedImages(dataset, "image", "caption", seed=1)
    first = [view[i]["caption"] for i in range(24)]
    assert first == [view[i]["caption"] for i in range(24)]
    assert len(set(first)) > len({c.split(" on ")[0] for c in first})  # both captions of an image get drawn
    view.set_epoch(1)
    assert [view[i]["caption"] for i in range(24)] != first


def test_bad_data_gives_clear_errors(caption_folder, tmp_path):
    rows = [
        {"image": str(caption_folder / "0000.png"), "caption": "a red circle"},
        {"image": str(caption_folder / "0001.png"), "caption": "  "},
    ]
    empty_caption = tmp_path / "empty_caption.jsonl"
    empty_caption.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"empty_caption.jsonl: row 1 has no non-empty caption"):
        validate(load_source(str(empty_caption))[0], str(empty_caption), "image", "caption")
    with pytest.raises(ValueError, match=r"no column 'text' \(columns: image, caption\)"):
        validate(load_source(str(empty_caption))[0], str(empty_caption), "image", "text")
    empty = tmp_path / "empty.csv"
    empty.write_text("image,caption\n")
    with pytest.raises(ValueError, match=r"empty.csv: the dataset is empty"):
        validate(load_source(str(empty))[0], str(empty), "image", "caption")


@pytest.mark.slow
def test_unreadable_images_are_skipped_then_stop_the_run(backbones, caption_folder, tmp_path):
    folder = tmp_path / "shapes"
    shutil.copytree(caption_folder, folder)
    (folder / "0003.png").write_bytes(b"not a png")
    dataset, _ = load_source(str(folder))
    items = [CaptionedImages(dataset, "image", "caption")[i] for i in (2, 3)]
    from modeling_vlap import VLAPProcessor

    processor = VLAPProcessor.from_vision_text_pretrained(str(backbones["clip"]), str(backbones["opt"]))
    batch = Collator(processor)(items)
    assert batch["bad_rows"] == [3] and batch["pixel_values"].shape[0] == 1
    # 1 bad image in 24 is 4%: above a 1% limit the run stops with the rows named, within 10% it trains on.
    result = run_train(
        write_config(tmp_path / "bad.yaml", backbones, folder, tmp_path / "out", max_steps=6), check=False
    )
    assert result.returncode != 0 and "unreadable images, more than max_bad_fraction=0.01" in result.stderr
    assert "0003.png" in result.stderr  # the bad file is named, not only its row
    result = run_train(
        write_config(tmp_path / "ok.yaml", backbones, folder, tmp_path / "ok", max_steps=6, max_bad_fraction=0.1)
    )
    assert '"unreadable_images": 1' in result.stdout


class _Planted:
    """Unpickling this writes a marker file: what a malicious checkpoint would do instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


@pytest.mark.slow
def test_a_run_is_never_overwritten_and_a_planted_pickle_is_never_loaded(backbones, caption_folder, tmp_path):
    import pickle

    run = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", backbones, caption_folder, run, max_steps=4, checkpointing_steps=4)
    run_train(config)
    weights = (run / "final" / "model.safetensors").read_bytes()
    log = (run / "metrics.jsonl").read_text()

    again = run_train(config, check=False)  # same output_dir, no --resume
    assert again.returncode != 0 and "already holds a run" in again.stderr and "Traceback" not in again.stderr
    assert (run / "final" / "model.safetensors").read_bytes() == weights and (run / "metrics.jsonl").read_text() == log

    marker = tmp_path / "marker"
    checkpoint = run / "checkpoints" / "step-4"
    assert not list(checkpoint.glob("*.pkl")) or all(
        p.name.startswith("random_states") for p in checkpoint.glob("*.pkl")
    )
    (checkpoint / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(_Planted(marker)))
    resumed = run_train(config, "--resume", check=False)
    assert resumed.returncode != 0 and "refusing to resume" in resumed.stderr and not marker.exists()

    replaced = run_train(config, "--overwrite-output-dir", "--max-steps", "2", "--checkpointing-steps", "2")
    assert replaced.returncode == 0 and [r["step"] for r in metrics(run)] == [1, 2]


def test_bad_budgets_fail_with_a_reason_before_training(backbones, caption_folder, tmp_path):
    config = write_config(tmp_path / "d.yaml", backbones, caption_folder, tmp_path / "run")
    for extra, reason in (
        (("--batch-size", "100"), "no full batch"),
        (("--learning-rate", "-1"), "learning_rate"),
        (("--batch-size", "0"), "batch_size"),
    ):
        result = run_train(config, *extra, check=False)
        assert result.returncode != 0 and reason in result.stderr and "Traceback" not in result.stderr, extra
    assert not (tmp_path / "run" / "final").exists()


def test_the_model_section_takes_every_method_setting_and_vlap_config_alone_validates_it(caption_folder, tmp_path):
    import yaml

    import train
    from modeling_vlap import VLAPConfig

    assert set(train.MODEL_FIELDS) == set(VLAPConfig.__annotations__) - set(train.DERIVED_MODEL_FIELDS)
    assert not set(train.MODEL_FIELDS) & {field.name for field in dataclasses.fields(train.TrainConfig)}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"train_data": str(caption_folder), "model": {"sinkhorn_iterations": 5}}))
    flags = ["--model.word-marginal-weight", "null", "--model.prompt", "A photo of", "--model.sinkhorn-iterations", "7"]
    config = train.parse_config(["--config", str(path), *flags])
    assert config.model == {"sinkhorn_iterations": 7, "word_marginal_weight": None, "prompt": "A photo of"}
    with pytest.raises(SystemExit, match="VLAPConfig.sinkhorn_epsilon must be a finite number > 0"):
        train.parse_config(["--config", str(path), "--model.sinkhorn-epsilon", "0"])


def test_help_lists_every_option_with_its_default_and_a_line_of_help(capsys):
    import train

    with pytest.raises(SystemExit):
        train.parse_config(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for field in dataclasses.fields(train.TrainConfig):
        if field.name != "model":
            flag = "--" + field.name.replace("_", "-")
            assert f"{flag} " in text and f"(default: {field.default!r})" in text, flag
    for name, field in train.MODEL_FIELDS.items():
        described = text.split(f"--model.{name.replace('_', '-')} VALUE ")[1].split(" --")[0]
        assert described.endswith(f"(default: {field.default!r})") and len(described) > len("(default: )") + 10, name
