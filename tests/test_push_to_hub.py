"""push_to_hub.py against a loopback stub Hub: assembled, verified, uploaded, downloaded back, loaded the same."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import snapshot_download
from safetensors import safe_open
from tiny import HubStub, build

import push_to_hub

REPO = Path(__file__).resolve().parent.parent

FAKE_TOKEN = "hf_FakeTokenForTests0123456789abcdefXYZ"
REMOTE_CODE = {
    "configuration_vlap.py",
    "modeling_vlap.py",
    "assignment_prediction.py",
    "optimal_transport.py",
    "processing_vlap.py",
    "pipeline_vlap.py",
}  # not efficientnet_lite.py: these tiny models see through CLIP
PROCESSOR_FILES = {"processor_config.json", "tokenizer.json", "tokenizer_config.json"}
REPORT = {
    "model": "run/final",
    "task": "caption",
    "data": "easy-vqa-test",
    "command": "vlap eval run/final --task caption",
    "scores": {"BLEU-4": 0.031, "CIDEr": 0.282},
}


@pytest.fixture(scope="module")
def trained(backbones, tmp_path_factory) -> Path:
    """A train.py-shaped output_dir: final/ (model + processor) and train_config.json."""
    root = tmp_path_factory.mktemp("run")
    model, processor = build(backbones, "llama", num_visual_tokens=4)
    with torch.no_grad():
        model.bridge.weight.normal_(std=0.5)  # a trained-looking bridge, so outputs depend on it
    model.save_pretrained(root / "final")
    processor.save_pretrained(root / "final")
    (root / "train_config.json").write_text(
        json.dumps({"train_data": "data/shapes", "max_steps": 60, "batch_size": 16, "learning_rate": 1e-3, "seed": 0})
    )
    return root


@pytest.fixture(scope="module")
def before_upload(trained) -> dict:
    """What the model folder gives in a fresh offline process before any upload."""
    return push_to_hub.verify(trained / "final")


def push(hub: HubStub, tmp_path: Path, *args) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.endpoint,
        "HF_TOKEN": FAKE_TOKEN,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    env.pop("HF_HUB_OFFLINE", None)
    return subprocess.run(
        [sys.executable, str(REPO / "push_to_hub.py"), *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def uploads(hub: HubStub) -> list[dict]:
    return [
        r
        for r in hub.requests
        if r["path"].split("?")[0].rsplit("/", 2)[-2] in ("commit", "preupload")
        or r["path"].startswith("/api/repos/create")
    ]


@pytest.mark.slow
def test_upload_round_trips_through_the_hub(trained, before_upload, tmp_path):
    report = tmp_path / "report.json"
    report.write_text(json.dumps(REPORT))
    with HubStub() as hub:
        result = push(hub, tmp_path, trained, "--repo-id", "tester/tiny-vlap", "--results", report)
        assert result.returncode == 0, result.stderr[-3000:]
        uploaded = hub.repos["tester/tiny-vlap"]["main"]
        assert set(uploaded) == REMOTE_CODE | PROCESSOR_FILES | {
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "README.md",
        }
        assert f"{hub.endpoint}/tester/tiny-vlap" in result.stdout
        config = json.loads(uploaded["config.json"])
        assert config["auto_map"]["AutoModel"] and config["custom_pipelines"]["image-to-text"]
        card = uploaded["README.md"].decode()
        assert "model-index" in card and "0.282" in card and "vlap eval run/final --task caption" in card

        downloaded = Path(snapshot_download("tester/tiny-vlap", endpoint=hub.endpoint, cache_dir=tmp_path / "cache"))
    assert push_to_hub.verify(downloaded) == before_upload
    secret_free(result, uploaded, hub)


@pytest.mark.slow
def test_bridge_only_upload_is_small_and_loads_its_local_backbones(trained, before_upload, tmp_path):
    with HubStub() as hub:
        result = push(
            hub, tmp_path, trained / "final", "--repo-id", "tester/tiny-bridge", "--bridge-only", "--revision", "bridge"
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert hub.repos["tester/tiny-bridge"]["main"] == {} and result.stdout.strip().endswith("/tree/bridge")
        uploaded = hub.repos["tester/tiny-bridge"]["bridge"]
        downloaded = Path(
            snapshot_download(
                "tester/tiny-bridge", revision="bridge", endpoint=hub.endpoint, cache_dir=tmp_path / "cache"
            )
        )
    with safe_open(downloaded / "model.safetensors", "pt") as weights:
        assert set(weights.keys()) == {"bridge.weight", "bridge.bias", "word_prior", "word_frequency"}
    config = json.loads(uploaded["config.json"])
    assert config["bridge_only"] is True and config["backbones"]["text"]["name_or_path"].endswith("llama")
    full_size = (trained / "final" / "model.safetensors").stat().st_size
    assert len(uploaded["model.safetensors"]) < full_size / 10
    assert push_to_hub.verify(downloaded) == before_upload  # backbones from local paths, offline
    secret_free(result, uploaded, hub)


def secret_free(result: subprocess.CompletedProcess, uploaded: dict, hub: HubStub) -> None:
    """The token reaches the Hub only in the Authorization header: never in output, files or request bodies."""
    assert FAKE_TOKEN not in result.stdout + result.stderr
    assert all(FAKE_TOKEN.encode() not in content for content in uploaded.values())
    assert all(FAKE_TOKEN.encode() not in request["body"] for request in hub.requests)
    headers = [{k.lower(): v for k, v in request["headers"].items()} for request in uploads(hub)]
    assert headers and all(h.get("authorization") == f"Bearer {FAKE_TOKEN}" for h in headers)


@pytest.mark.slow
def test_a_folder_that_fails_verification_is_not_uploaded(backbones, tmp_path):
    model, processor = build(backbones, "llama", num_visual_tokens=4)
    model.config.backbones["vision"]["name_or_path"] = str(tmp_path / "moved-away-clip")  # unloadable backbone
    model.save_pretrained(tmp_path / "broken")
    processor.save_pretrained(tmp_path / "broken")
    with HubStub() as hub:
        result = push(hub, tmp_path, tmp_path / "broken", "--repo-id", "tester/broken", "--bridge-only")
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert (
            result.stderr.strip()
            .splitlines()[-1]
            .startswith("push_to_hub: error: verification failed, nothing uploaded")
        )
        assert uploads(hub) == [] and hub.repos == {}


@pytest.mark.slow
def test_dry_run_shards_lists_the_files_and_uploads_nothing(trained, tmp_path):
    with HubStub() as hub:
        result = push(
            hub,
            tmp_path,
            trained,
            "--repo-id",
            "tester/dry",
            "--dry-run",
            "--staging",
            tmp_path / "stage",
            "--max-shard-size",
            "50KB",
        )
        assert result.returncode == 0, result.stderr[-3000:]  # the sharded folder passed the fresh-process check
        assert uploads(hub) == []
    listed = {line.split()[-1] for line in result.stdout.splitlines() if line.strip()[:1].isdigit()}
    assert listed == {p.name for p in (tmp_path / "stage").iterdir()} and "README.md" in listed
    shards = sorted(name for name in listed if name.startswith("model-") and name.endswith(".safetensors"))
    assert len(shards) > 1 and "model.safetensors.index.json" in listed
    assert "dry run: nothing uploaded" in result.stdout


def card_metadata(card) -> dict:
    return card.data.to_dict()


@pytest.mark.parametrize("with_results", [True, False])
def test_card_renders_and_validates(trained, tmp_path, with_results):
    from modeling_vlap import VLAPForConditionalGeneration

    model = VLAPForConditionalGeneration.from_pretrained(trained / "final")
    model.config.backbones["vision"]["name_or_path"] = "openai/clip-vit-base-patch32"  # a Hub id goes to base_model
    results = push_to_hub.load_results([_write(tmp_path / "r.json", REPORT)]) if with_results else []
    training = json.loads((trained / "train_config.json").read_text())
    card = push_to_hub.render_card(
        model,
        "tester/card",
        training,
        results,
        bridge_only=False,
        license="apache-2.0",
        datasets=["user/shape-captions"],
    )
    push_to_hub.validate_card(card)
    metadata = card_metadata(card)
    assert metadata["library_name"] == "transformers" and metadata["pipeline_tag"] == "image-text-to-text"
    assert metadata["base_model"] == ["openai/clip-vit-base-patch32"]  # the local LLM folder is not a Hub id
    assert metadata["datasets"] == ["user/shape-captions"]
    assert "tester/card" in card.text and "trust_remote_code=True" in card.text and "park2024bridging" in card.text
    assert "| learning_rate | 0.001 |" in card.text
    for task in ("image-to-text", "image-text-to-text", "zero-shot-image-classification", "image-feature-extraction"):
        assert f'pipeline("{task}", model="tester/card", trust_remote_code=True)' in card.text
    if with_results:
        entries = metadata["model-index"][0]["results"]
        values = {m["name"]: m["value"] for entry in entries for m in entry["metrics"]}
        assert values == REPORT["scores"] and REPORT["command"] in card.text
    else:
        assert "model-index" not in metadata and "No evaluation results" in card.text


def _write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_bad_card_metadata_is_rejected(trained):
    from huggingface_hub import ModelCard

    card = ModelCard("---\nlibrary_name: transformers\npipeline_tag: text-generation\n---\n# x\n")
    with pytest.raises(push_to_hub.PushError, match="pipeline_tag"):
        push_to_hub.validate_card(card)


@pytest.mark.slow
def test_the_cards_usage_blocks_run_on_a_saved_model(trained, tmp_path):
    """model_cards/usage.py, the source of the card's pipeline blocks, runs as written in a fresh offline process."""
    from PIL import Image

    Image.new("RGB", (40, 40), "red").save(tmp_path / "photo.png")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, str(REPO / "model_cards" / "usage.py"), trained / "final", tmp_path / "photo.png"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("[{'generated_text':") and "'role': 'assistant'" in lines[3]
    labels = [row["label"] for row in ast.literal_eval(lines[4])]
    assert sorted(labels) == ["blue rectangle", "green triangle", "red circle"]
    assert lines[5].startswith("(1, 4, ")  # 4 visual tokens


@pytest.mark.parametrize(
    "scores, reason",
    [
        ({"CIDEr": float("nan")}, "CIDEr=nan is not a finite number"),
        ({"CIDEr": float("inf")}, "CIDEr=inf is not a finite number"),
        ({"CIDEr": "high"}, "CIDEr='high' is not a finite number"),
        ({"CIDEr": True}, "CIDEr=True is not a finite number"),
        ("high", "its scores are not a mapping"),
    ],
)
def test_a_score_that_is_not_a_finite_number_never_reaches_the_card(tmp_path, scores, reason):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({**REPORT, "scores": scores}))  # json writes NaN / Infinity, as Python reads them
    with pytest.raises(push_to_hub.PushError, match=None) as error:
        push_to_hub.load_results([path])
    assert reason in str(error.value)


def test_a_tampered_folder_ships_only_this_packages_code_and_runs_none_of_its_own(trained, tmp_path):
    """A model folder whose .py files were edited (and one added) is assembled from the installed code: the edits
    never run, and the staged repository holds this package's remote-code files byte for byte."""
    import shutil

    import modeling_vlap

    folder = tmp_path / "tampered"
    shutil.copytree(trained / "final", folder)
    marker = tmp_path / "code-ran"
    payload = f"\nimport pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
    for module in folder.glob("*.py"):
        module.write_text(module.read_text() + payload)
    (folder / "extra_module.py").write_text(payload)
    card_args = {"repo_id": "tester/t", "training": {}, "results": [], "license": "apache-2.0", "datasets": []}
    files = push_to_hub.assemble(folder, tmp_path / "stage", False, "5GB", card_args)
    package = Path(modeling_vlap.__file__).parent
    staged_code = {path.name: path.read_bytes() for path in files if path.suffix == ".py"}
    assert set(staged_code) == REMOTE_CODE
    assert all(staged_code[name] == (package / name).read_bytes() for name in staged_code)
    assert not marker.exists()


def test_save_pretrained_writes_a_card_the_hub_reads_and_keeps_an_existing_one(trained, tmp_path):
    from huggingface_hub import ModelCard

    from modeling_vlap import VLAPForConditionalGeneration

    model = VLAPForConditionalGeneration.from_pretrained(trained / "final")
    model.save_pretrained(tmp_path / "saved")
    metadata = ModelCard.load(tmp_path / "saved" / "README.md").data.to_dict()
    assert metadata["pipeline_tag"] == "image-text-to-text" and metadata["library_name"] == "transformers"
    assert "custom_code" in metadata["tags"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "README.md").write_text("# my own card\n")
    model.save_pretrained(tmp_path / "mine", bridge_only=True)
    assert (tmp_path / "mine" / "README.md").read_text() == "# my own card\n"
