"""Share a trained VLAP model on the Hugging Face Hub: assemble the whole repository, verify it, upload it.

    python push_to_hub.py OUTPUT_DIR --repo-id user/name [--private] [--revision BRANCH] [--commit-message MSG]
                          [--bridge-only] [--dry-run] [--results report.json ...] [--license apache-2.0]

OUTPUT_DIR is a saved model folder or a train.py output_dir (its `final/` is used; its train_config.json feeds the
card, as does results.json beside the model or any --results file from `vlap eval --out` / `make demo`).

1. Assemble: config.json (auto_map, custom_pipelines), safetensors weights (sharded above --max-shard-size), every
   remote-code module, processor and tokenizer files, generation_config.json and README.md (the model card, rendered
   from model_cards/vlap.md with huggingface_hub's ModelCard and validated locally).
2. Verify: a fresh Python process with HF_HUB_OFFLINE=1, where this repository cannot be imported, loads the folder
   through AutoModel, AutoProcessor and pipeline("image-to-text") and captions an image. A failure stops here.
3. Upload with huggingface_hub (create_repo(exist_ok=True), upload_folder) and print the URL. The token comes from
   huggingface_hub's usual sources (HF_TOKEN, `hf auth login`) and is never printed or written.

--bridge-only uploads the bridge + word prior (a few MB) with a config naming the two backbones, which
from_pretrained then loads by name. --dry-run stops after the verification and lists the files.
"""

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent
CARD_TEMPLATE = REPO / "model_cards" / "vlap.md"
CARD_USAGE = REPO / "model_cards" / "usage.py"  # the card's pipeline blocks; the tests run this file as it is

VERIFY_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class NoRepositoryImports(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("modeling_vlap", "vlap"):
                raise ImportError(f"{name} must come from the assembled folder, not from the vlap repository")

    sys.meta_path.insert(0, NoRepositoryImports())
    import numpy as np
    from PIL import Image
    from transformers import AutoModel, AutoProcessor, pipeline

    folder = sys.argv[1]
    ramp = np.linspace(0, 255, 64 * 64 * 3).reshape(64, 64, 3).astype(np.uint8)
    image = Image.fromarray(ramp)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    settings = {"max_new_tokens": 6, "do_sample": False}
    ids = model.generate(**processor(images=[image]), **settings)
    captioner = pipeline("image-to-text", model=folder, trust_remote_code=True)
    print(json.dumps({
        "model_class": type(model).__name__,
        "ids": ids.tolist(),
        "caption": captioner(image, **settings)[0]["generated_text"],
        "image_features": model.get_image_features(processor(images=[image])["pixel_values"]).tolist(),
    }))
    """
)


class PushError(Exception):
    """Reported as one line; nothing has been uploaded."""


def model_folder(output_dir: Path) -> Path:
    """A saved model folder, or train.py's output_dir (whose final/ holds the model)."""
    for candidate in (output_dir, output_dir / "final"):
        if (candidate / "config.json").exists():
            return candidate
    raise PushError(f"{output_dir}: no config.json there or in {output_dir / 'final'} (not a saved VLAP model)")


def is_hub_id(name: str | None) -> bool:
    return bool(name) and not Path(name).exists() and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) is not None


# ------------------------------------------------------------------------------------------------- results & card
def load_results(paths: list[Path]) -> list[dict]:
    """Reports of `vlap eval --out` and the demo's results.json -> [{task, dataset, scores, command}]."""
    results = []
    for path in paths:
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise PushError(f"{path}: not a readable results file ({error})") from None
        if "task" in report and "scores" in report:  # vlap eval --out
            results.append(
                {
                    "task": report["task"],
                    "dataset": report.get("data", "unknown data"),
                    "scores": report["scores"],
                    "command": report.get("command", "vlap eval"),
                }
            )
        elif "vlap" in report and "setup" in report:  # make demo
            results.append(
                {
                    "task": "captioning, zero-shot VQA, retrieval",
                    "dataset": "easy-vqa test",
                    "scores": report["vlap"]["scores"],
                    "command": report["setup"].get("command", "make demo"),
                }
            )
        else:
            raise PushError(f"{path}: neither a `vlap eval --out` report nor a `make demo` results.json")
        scores = results[-1]["scores"]
        if not isinstance(scores, dict):
            raise PushError(f"{path}: its scores are not a mapping of metric names to numbers")
        for metric, value in scores.items():  # what goes into the card must be a measured, finite number
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise PushError(f"{path}: the score {metric}={value!r} is not a finite number")
    return results


def card_eval_results(results: list[dict], model_name: str) -> list:
    """model-index entries (huggingface_hub EvalResult) for the measured scores."""
    from huggingface_hub import EvalResult

    task_types = {"caption": "image-to-text", "vqa": "visual-question-answering", "retrieval": "image-text-retrieval"}
    entries = []
    for result in results:
        for metric, value in result["scores"].items():
            kind = "vqa" if metric == "vqa_accuracy" else "retrieval" if "_R@" in metric else "caption"
            entries.append(
                EvalResult(
                    task_type=task_types[kind],
                    dataset_type=result["dataset"],
                    dataset_name=result["dataset"],
                    metric_type=metric.lower(),
                    metric_name=metric,
                    metric_value=float(value),
                )
            )
    return entries


def usage_blocks(repo_id: str) -> list[tuple[str, str]]:
    """(title, code) of each "# --- title" block of model_cards/usage.py, MODEL and IMAGE spelled out."""
    parts = re.split(r"^# --- (.+)$", CARD_USAGE.read_text(), flags=re.MULTILINE)
    blocks = []
    for title, code in zip(parts[1::2], parts[2::2]):
        code = re.sub(r"\bMODEL\b", json.dumps(repo_id), code.strip())
        blocks.append((title, re.sub(r"\bIMAGE\b", '"photo.jpg"', code)))
    return blocks


def render_card(
    model,
    repo_id: str,
    training: dict | None,
    results: list[dict],
    bridge_only: bool,
    license: str,
    datasets: list[str] = (),
):
    """The model card: YAML metadata + usage, method, training, results, limitations and citations."""
    from huggingface_hub import ModelCard, ModelCardData

    config = model.config
    backbones = config.backbones or {}
    vision, text = backbones.get("vision") or {}, backbones.get("text") or {}
    vision_name, text_name = vision.get("name_or_path"), text.get("name_or_path")
    train_data = (training or {}).get("train_data")
    card_data = ModelCardData(
        language=["en"],
        license=license,
        library_name="transformers",
        pipeline_tag="image-text-to-text",  # what the LLaVA family carries, and the Hub's widgets and filters key on
        tags=[
            "vlap",
            "vision-language",
            "image-captioning",
            "visual-question-answering",
            "optimal-transport",
            "custom_code",
        ]
        + (["langbridge"] if config.bridge_type == "langbridge" else []),
        base_model=[name for name in (vision_name, text_name) if is_hub_id(name)] or None,
        datasets=list(datasets) or None,
        model_name=repo_id,
        eval_results=card_eval_results(results, repo_id) or None,
    )

    def display(name: str | None, model_type: str) -> str:
        if name is None:
            return f"a `{model_type}` model (its source was not recorded)"
        return (
            f"[{name}](https://huggingface.co/{name})" if is_hub_id(name) else f"`{Path(name).name}` (a local folder)"
        )

    bridge_parameters = sum(p.numel() for p in model.bridge.parameters())
    bridge_bytes = sum(p.numel() * p.element_size() for p in model.bridge.parameters()) + model.word_prior.numel() * 4
    keep = (
        "train_data",
        "max_steps",
        "num_epochs",
        "batch_size",
        "learning_rate",
        "warmup_steps",
        "mixed_precision",
        "max_caption_length",
        "assignment_loss_weight",
        "seed",
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(CARD_TEMPLATE),
        repo_id=repo_id,
        bridge_only=bridge_only,
        bridge_size=f"{bridge_bytes / 2**20:.1f} MB",
        vision_name=display(vision_name, config.vision_config.model_type),
        vision_revision=vision.get("revision"),
        text_name=display(text_name, config.text_config.model_type),
        text_revision=text.get("revision"),
        bridge_description=(
            f"LangBridge: MLP -> coefficients over {len(config.langbridge_tokens)} shared words -> their embeddings"
            if config.bridge_type == "langbridge"
            else f"`nn.Linear({config.vision_hidden_size}, {config.projection_dim})`"
        ),
        num_visual_tokens=config.num_visual_tokens or "all",
        bridge_parameters=f"{bridge_parameters:,}",
        prompt=config.prompt,
        sinkhorn_epsilon=config.sinkhorn_epsilon,
        sinkhorn_iterations=config.sinkhorn_iterations,
        assignment_temperature=config.assignment_temperature,
        assignment_loss_weight=config.assignment_loss_weight,
        text_representation=config.text_representation,
        word_marginal_weight=config.word_marginal_weight,
        training={k: training[k] for k in keep if training and training.get(k) is not None},
        training_data=f"`{train_data}`" if train_data else "its training captions",
        results=results,
        langbridge=config.bridge_type == "langbridge",
        usage_blocks=usage_blocks(repo_id),
    )


def validate_card(card) -> None:
    """huggingface_hub's own parsing of the rendered card: the YAML round-trips into ModelCardData and the
    model-index into EvalResults (what the Hub checks on upload), with the fields the Hub needs for this model."""
    from huggingface_hub import ModelCard, ModelCardData
    from huggingface_hub.repocard_data import model_index_to_eval_results

    parsed = ModelCard(str(card))
    metadata = parsed.data.to_dict()
    ModelCardData(**metadata)
    if "model-index" in metadata:
        model_index_to_eval_results(metadata["model-index"])
    for key, expected in (("library_name", "transformers"), ("pipeline_tag", "image-text-to-text")):
        if metadata.get(key) != expected:
            raise PushError(f"model card metadata: {key} should be {expected!r}, got {metadata.get(key)!r}")


# ------------------------------------------------------------------------------------------- assemble & verify
def assemble(folder: Path, staging: Path, bridge_only: bool, max_shard_size: str, card_args: dict) -> list[Path]:
    """Write the complete repository into `staging` and return its files."""
    import modeling_vlap
    from modeling_vlap import VLAPForConditionalGeneration, VLAPProcessor

    model = VLAPForConditionalGeneration.from_pretrained(folder)
    processor = VLAPProcessor.from_pretrained(folder)
    model.save_pretrained(staging, bridge_only=bridge_only, max_shard_size=max_shard_size)
    processor.save_pretrained(staging)
    config = json.loads((staging / "config.json").read_text())
    for key in ("auto_map", "custom_pipelines"):
        if not config.get(key):
            raise PushError(f"the assembled config.json has no {key}: the model would not load with trust_remote_code")
    shipped = {path.name: path.read_bytes() for path in Path(modeling_vlap.__file__).parent.glob("*.py")}
    foreign = [
        path.name for path in staging.rglob("*.py") if shipped.get(path.name) != path.read_bytes()
    ]  # the assembled folder may hold this package's remote code, byte for byte, and nothing else that runs
    if foreign:
        raise PushError(
            f"the assembled folder holds code that is not this package's remote code ({', '.join(sorted(foreign))}); "
            "nothing uploaded"
        )
    card = render_card(model, **card_args, bridge_only=bridge_only)
    validate_card(card)
    card.save(staging / "README.md")
    return sorted(p for p in staging.rglob("*") if p.is_file())


def verify(folder: Path, timeout: int = 900) -> dict:
    """Load `folder` in a fresh offline process without this repository; its outputs, or PushError."""
    with tempfile.TemporaryDirectory() as scratch:
        script = Path(scratch) / "verify.py"
        script.write_text(VERIFY_SCRIPT)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        result = subprocess.run(
            [sys.executable, str(script), str(folder.resolve())],
            cwd=scratch,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    if result.returncode != 0:
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        raise PushError(
            f"verification failed, nothing uploaded: loading {folder} in a fresh offline process "
            f"raised {lines[-1] if lines else 'an error'}"
        )
    return json.loads(result.stdout.strip().splitlines()[-1])


def upload(staging: Path, repo_id: str, private: bool, revision: str | None, commit_message: str) -> str:
    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=staging, revision=revision, commit_message=commit_message)
    return f"{url}/tree/{revision}" if revision and revision != "main" else str(url)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", type=Path, metavar="OUTPUT_DIR")
    parser.add_argument("--repo-id", required=True, help="user/name or org/name")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--revision", default=None, help="branch to upload to (created if missing)")
    parser.add_argument("--commit-message", default="Upload VLAP model")
    parser.add_argument("--bridge-only", action="store_true", help="upload only the bridge + word prior")
    parser.add_argument("--dry-run", action="store_true", help="assemble and verify, list the files, upload nothing")
    parser.add_argument("--results", type=Path, action="append", default=[], help="a results file (repeatable)")
    parser.add_argument("--license", default="apache-2.0", help="the card's license (default apache-2.0)")
    parser.add_argument("--dataset", action="append", default=[], help="Hub id of a training dataset, for the card")
    parser.add_argument("--max-shard-size", default="5GB", help="shard weights above this size (default 5GB)")
    parser.add_argument("--staging", type=Path, default=None, help="assemble here and keep it (default: a temp dir)")
    args = parser.parse_args(argv)
    try:
        folder = model_folder(args.output_dir)
        training_path = folder.parent / "train_config.json"
        training = json.loads(training_path.read_text()) if training_path.exists() else None
        results = load_results(([folder / "results.json"] if (folder / "results.json").exists() else []) + args.results)
        card_args = {
            "repo_id": args.repo_id,
            "training": training,
            "results": results,
            "license": args.license,
            "datasets": args.dataset,
        }
        with tempfile.TemporaryDirectory() as scratch:
            staging = args.staging or Path(scratch) / "repo"
            if staging.exists() and any(staging.iterdir()):
                raise PushError(f"--staging {staging} is not empty")
            files = assemble(folder, staging, args.bridge_only, args.max_shard_size, card_args)
            print(f"assembled {len(files)} files in {staging}; verifying in a fresh offline process ...", flush=True)
            verified = verify(staging)
            print(
                f"verified: {verified['model_class']} loads through AutoModel and pipeline; "
                f"caption {verified['caption']!r}"
            )
            if args.dry_run:
                for path in files:
                    print(f"{path.stat().st_size:>12,d}  {path.relative_to(staging)}")
                print("dry run: nothing uploaded")
                return 0
            url = upload(staging, args.repo_id, args.private, args.revision, args.commit_message)
        print(f"uploaded {len(files)} files to {url}")
    except Exception as error:  # noqa: BLE001  (one line, no traceback; huggingface_hub errors carry no token)
        network = type(error).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "requests", "urllib3")
        if not (
            isinstance(error, (PushError, ValueError, OSError))
            or network
            or type(error).__module__.split(".")[0] == "huggingface_hub"
        ):
            raise
        from huggingface_hub import constants

        where = f"{constants.ENDPOINT}: {type(error).__name__}: " if network else ""
        print(f"push_to_hub: error: {where}{' '.join(str(error).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
