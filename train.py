"""Train a VLAP bridge.

    python train.py --config cfg.yaml [--any-field value ...]
    accelerate launch [--num_processes N] train.py --config cfg.yaml       # DeepSpeed/FSDP via your accelerate config

Every TrainConfig field can be set in the YAML file and overridden on the command line (`--learning-rate 1e-3`).
One loop, top to bottom: data -> word prior -> (feature cache) -> optimiser -> resume -> steps -> export.
"""

import argparse
import contextlib
import dataclasses
import errno
import fcntl
import functools
import json
import math
import os
import re
import resource
import shutil
import tarfile
import tempfile
import time
import typing
from pathlib import Path

import datasets
import torch
import yaml
from accelerate import Accelerator
from accelerate.tracking import LOGGER_TYPE_TO_CLASS
from accelerate.utils import DistributedType, gather_object, set_seed
from tqdm.auto import tqdm
from transformers import AutoTokenizer, get_cosine_schedule_with_warmup

from modeling_vlap import VLAPConfig, VLAPForConditionalGeneration, VLAPProcessor
from modeling_vlap.modeling_vlap import WORD_STATISTICS
from vlap.data import (
    FORMATS,
    CaptionedImages,
    Collator,
    StreamedCaptionedImages,
    caption_list,
    caption_token_counts,
    load_source,
    validate,
)
from vlap.diagnostics import assignment_diagnostics, content_word_mask
from vlap.features import build_feature_cache
from vlap.langbridge import caption_words, english_vocabulary, select_vocabulary, string_to_id
from vlap.lora import apply_lora, merge_lora, parse_lora


def option(default, help: str):
    """A TrainConfig field with its one-line help (`python train.py --help` shows both)."""
    if isinstance(default, dict):
        return dataclasses.field(default_factory=lambda: dict(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass
class TrainConfig:
    # Backbones (Hub ids or local folders)
    vision_model: str = option("openai/clip-vit-base-patch32", "the frozen vision model (Hub id or local folder)")
    text_model: str = option("google-t5/t5-base", "the frozen LLM: T5 or any causal LM (Hub id or local folder)")
    # The method's settings: VLAPConfig fields, validated by VLAPConfig alone
    model: dict = option({}, "VLAPConfig fields (the method's settings); in YAML a `model:` mapping")
    # Data
    train_data: str = option("", "imagefolder | .jsonl/.csv | save_to_disk folder | Hub id | *.tar shards (required)")
    validation_data: str | None = option(None, "the same kinds; its loss and captions are logged every eval_steps")
    data_format: str = option("auto", "auto | imagefolder | json | csv | disk | hub | webdataset")
    image_column: str = option("image", "the column holding the image (or its path)")
    caption_column: str = option("caption", "the column holding the caption (a string or a list of them)")
    max_caption_length: int = option(64, "caption tokens kept (the word prior counts the same tokens)")
    max_bad_fraction: float = option(0.01, "unreadable images skipped, up to this fraction of the dataset")
    word_prior_rows: int = option(100_000, "rows read to fit the word prior from a streamed dataset")
    cache_features: str | None = option(None, "a folder: run the frozen vision model once per image, train from it")
    # LangBridge (model.bridge_type: langbridge) and word bridge (words): the vocabulary, built from the data and LLMs
    langbridge_vocab_size: int = option(
        19_200, "N words, each one token of this LLM and of every transfer LLM (word bridge: caption words)"
    )
    langbridge_vocabulary_source: str = option("english", "english (wordfreq's most frequent words) | captions")
    langbridge_transfer_llms: str | None = option(
        None, "comma-separated tokenizers (Hub ids / folders) to stay transferable to"
    )
    langbridge_vocabulary: str | None = option(
        None, "a JSON list of token strings (word bridge: of words), overriding langbridge_vocabulary_source"
    )
    init_bridge: str | None = option(None, "a saved model folder: start from its bridge (fine-tune a moved LangBridge)")
    lora: str | None = option(None, "r,alpha,targets (e.g. 8,16,q_proj|v_proj): LoRA on the LLM; off by default")
    # Optimisation: the paper's recipe
    batch_size: int = option(32, "images per process per step")
    gradient_accumulation_steps: int = option(1, "steps accumulated before each optimiser step")
    num_epochs: int = option(32, "epochs (unless max_steps)")
    max_steps: int | None = option(None, "optimiser steps (overrides num_epochs; required for streamed data)")
    learning_rate: float | None = option(None, "AdamW learning rate; none: 1e-2 for T5-family LLMs, 1e-4 for others")
    weight_decay: float = option(0.0, "AdamW weight decay")
    warmup_epochs: float = option(3.0, "linear warmup, then cosine to 0 (unless warmup_steps)")
    warmup_steps: int | None = option(None, "linear warmup in steps (overrides warmup_epochs)")
    max_grad_norm: float = option(1.0, "gradient clipping")
    mixed_precision: str = option("no", "no | bf16 | fp16 (the word codes stay float32)")
    gradient_checkpointing: bool = option(False, "recompute the frozen LLM's layers in backward (less memory, slower)")
    seed: int = option(42, "seeds the bridge's initialisation, the data order and the captions drawn")
    # Checkpoints, evaluation, logging
    output_dir: str = option("outputs/vlap", "checkpoints/, final/ (the exported model), metrics.jsonl")
    checkpointing_steps: int = option(500, "a checkpoint every this many steps, and at the end")
    checkpoints_total_limit: int = option(3, "the newest checkpoints kept (0: all)")
    resume: str | None = option(None, "latest | a checkpoint folder: continue that run (bare --resume: latest)")
    overwrite_output_dir: bool = option(False, "replace a previous run in output_dir (otherwise it is an error)")
    eval_steps: int = option(500, "validation loss and captions of fixed images every this many steps (0: never)")
    num_eval_images: int = option(4, "images captioned at each evaluation")
    report_to: str = option("none", "none | tensorboard | ... (accelerate trackers)")
    cpu: bool = option(False, "train on the CPU even where a GPU is present")


# VLAPConfig fields train.py sets itself: the backbones' configs and names, the export format, the LangBridge
# vocabulary (built from the data). Every other VLAPConfig field is a `model:` setting.
DERIVED_MODEL_FIELDS = (
    "vision_config",
    "text_config",
    "backbones",
    "bridge_only",
    "langbridge_tokens",
    "langbridge_token_ids",
)
MODEL_FIELDS = {
    field.name: field
    for field in dataclasses.fields(VLAPConfig)
    if field.name in VLAPConfig.__annotations__ and field.name not in DERIVED_MODEL_FIELDS
}


def model_field_help() -> dict[str, str]:
    """Each VLAPConfig field's first sentence in VLAPConfig's docstring (`Args:`), the `--model.*` help."""
    helps, names = {}, []
    for line in VLAPConfig.__doc__.splitlines():
        described = re.findall(r"(\w+) \(`[^`]+`(?:, \*optional\*)?\)", line.split("):")[0] + ")")
        if line.startswith(" " * 8) and not line.startswith(" " * 9) and described:
            names, text = described, line.split("):", 1)[1].strip()
            helps.update({name: text for name in names})
        elif names and line.strip():
            helps.update({name: helps[name] + " " + line.strip() for name in names})
    return {name: text.split(". ")[0].rstrip(".") for name, text in helps.items()}


class ConfigLoader(yaml.SafeLoader):
    """YAML's safe loader, stricter for a config: a key given twice is an error (not "the last one wins"), and the
    document may not expand (aliases of aliases) beyond MAX_CONFIG_NODES values ("billion laughs")."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(key, deep=True) for key, _ in node.value]
        repeated = sorted({str(key) for key in keys if keys.count(key) > 1})
        if repeated:
            raise yaml.constructor.ConstructorError(
                None, None, f"key(s) given twice: {', '.join(repeated)}", node.start_mark
            )
        return super().construct_mapping(node, deep)


MAX_CONFIG_NODES = 10_000


def read_config_file(path: str) -> dict:
    """The --config YAML file as a mapping, or a one-line SystemExit naming what is wrong with it."""
    try:
        values = yaml.load(Path(path).read_text(), Loader=ConfigLoader)
    except OSError as error:
        raise SystemExit(f"--config {path}: {error.strerror or error}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise SystemExit(f"--config {path}: not valid YAML ({' '.join(str(error).split())})") from None
    nodes, stack = 0, [values]
    while stack:  # counted without expanding: shared aliases are walked once per use, up to the limit
        value = stack.pop()
        nodes += 1
        if nodes > MAX_CONFIG_NODES:
            raise SystemExit(f"--config {path}: expands to more than {MAX_CONFIG_NODES:,} values (nested aliases)")
        stack.extend(value.values() if isinstance(value, dict) else value if isinstance(value, list) else ())
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise SystemExit(f"--config {path}: expected a mapping of TrainConfig fields, got a {type(values).__name__}")
    return values


def parse_config(argv=None) -> TrainConfig:
    """--config YAML first, then `--field value` overrides for every TrainConfig field and `--model.field value` for
    every VLAPConfig setting."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file of TrainConfig fields (the method's under `model:`)")
    fields = {field.name: field for field in dataclasses.fields(TrainConfig) if field.name != "model"}
    for name, field in fields.items():
        extra = {"nargs": "?", "const": "latest"} if name == "resume" else {}  # bare --resume: the latest checkpoint
        extra = {"nargs": "?", "const": "true"} if isinstance(field.default, bool) else extra  # a bare flag is true
        help_text = f"{field.metadata['help']} (default: {field.default!r})"
        parser.add_argument(
            "--" + name.replace("_", "-"), dest=name, default=argparse.SUPPRESS, help=help_text, **extra
        )
    model_help = model_field_help()
    group = parser.add_argument_group("the method's settings (VLAPConfig fields; YAML: under `model:`)")
    for name, field in MODEL_FIELDS.items():
        help_text = f"{model_help.get(name, '')} (default: {field.default!r})"
        group.add_argument(
            f"--model.{name.replace('_', '-')}",
            dest=f"model.{name}",
            default=argparse.SUPPRESS,
            help=help_text,
            metavar="VALUE",
        )
    args = vars(parser.parse_args(argv))
    values = {}
    if args.get("config"):
        values = read_config_file(args.pop("config"))
        unknown = set(values) - set(fields) - {"model"}
        method_fields = sorted(unknown & set(MODEL_FIELDS))
        if method_fields:
            raise SystemExit(f"{', '.join(method_fields)}: the method's settings go under `model:` (VLAPConfig fields)")
        if unknown:
            raise SystemExit(f"unknown config field(s): {', '.join(sorted(unknown))}")
    args.pop("config", None)
    model = values.pop("model", None) or {}
    if not isinstance(model, dict):
        raise SystemExit(f"model: expected a mapping of VLAPConfig fields, got {model!r}")
    model.update({key.removeprefix("model."): value for key, value in args.items() if key.startswith("model.")})
    values.update({key: value for key, value in args.items() if not key.startswith("model.")})
    config = TrainConfig(**{name: _parse(name, value, fields[name].type) for name, value in values.items()})
    config.model = model_settings(model)
    if not config.train_data:
        raise SystemExit("train_data is required (--train-data PATH or in the --config file)")
    checks = {
        "batch_size": config.batch_size >= 1,
        "gradient_accumulation_steps": config.gradient_accumulation_steps >= 1,
        "learning_rate": config.learning_rate is None or config.learning_rate >= 0,
        "max_steps": config.max_steps is None or config.max_steps >= 1,
        "num_epochs": config.num_epochs >= 1,
        "max_caption_length": config.max_caption_length >= 2,
        "max_bad_fraction": 0 <= config.max_bad_fraction <= 1,
        "warmup_steps": config.warmup_steps is None or config.warmup_steps >= 0,
        "warmup_epochs": config.warmup_epochs >= 0,
        "weight_decay": config.weight_decay >= 0,
        "checkpointing_steps": config.checkpointing_steps >= 1,
        "checkpoints_total_limit": config.checkpoints_total_limit >= 0,
        "eval_steps": config.eval_steps >= 0,
        "num_eval_images": config.num_eval_images >= 0,
        "max_grad_norm": config.max_grad_norm > 0,
        "seed": 0 <= config.seed < 2**32,
        "word_prior_rows": config.word_prior_rows >= 1,
        "langbridge_vocab_size": config.langbridge_vocab_size >= 1,
    }
    for name, ok in checks.items():
        if not ok:
            raise SystemExit(f"{name}={getattr(config, name)} is out of range")
    choices = {
        "mixed_precision": ("no", "bf16", "fp16"),
        "langbridge_vocabulary_source": ("english", "captions"),
        "data_format": FORMATS,
        "report_to": ("none", "all", *LOGGER_TYPE_TO_CLASS),
    }
    for name, allowed in choices.items():
        if getattr(config, name) not in allowed:
            raise SystemExit(f"{name}={getattr(config, name)!r} is not one of {', '.join(allowed)}")
    for name in ("train_data", "validation_data", "vision_model", "text_model", "init_bridge"):
        path = getattr(config, name)  # a Hub id is left to its loader; a local path must exist
        if path and path.startswith(("/", ".", "~")) and not Path(path).expanduser().exists():
            raise SystemExit(f"{name}: {path} does not exist")
    if config.init_bridge and not Path(config.init_bridge).is_dir():
        raise SystemExit(f"init_bridge: {config.init_bridge} is not a saved model folder")
    if config.lora:
        try:
            parse_lora(config.lora)
        except ValueError as error:
            raise SystemExit(f"lora: {error}") from None
    if config.langbridge_vocabulary:
        read_vocabulary(config.langbridge_vocabulary)
    check_output_dir(Path(config.output_dir))
    return config


def read_vocabulary(path: str) -> list[str]:
    """`langbridge_vocabulary`: a JSON list of token strings, or a one-line SystemExit."""
    try:
        tokens = json.loads(Path(path).read_text())
    except OSError as error:
        raise SystemExit(f"langbridge_vocabulary: {path}: {error.strerror or error}") from None
    except (ValueError, UnicodeDecodeError):
        raise SystemExit(f"langbridge_vocabulary: {path} is not JSON") from None
    if not isinstance(tokens, list) or not tokens or not all(isinstance(token, str) for token in tokens):
        raise SystemExit(f"langbridge_vocabulary: {path} is not a non-empty JSON list of token strings")
    return tokens


def check_output_dir(output_dir: Path) -> None:
    """output_dir is a folder this process can write (it or its nearest existing parent), checked before anything
    loads: a file, a read-only place or a kernel file system (/proc, /sys) fails here, not after training."""
    if output_dir.exists() and not output_dir.is_dir():
        raise SystemExit(f"output_dir: {output_dir} exists and is not a folder")
    existing = next(path for path in (output_dir.absolute(), *output_dir.absolute().parents) if path.exists())
    try:  # os.access says yes to root everywhere (even /proc): try to write
        tempfile.TemporaryDirectory(dir=existing).cleanup()
    except OSError as error:
        raise SystemExit(f"output_dir: cannot write in {existing} ({error.strerror or error})") from None


def _parse(name: str, value, kind):
    """A flag (text) or YAML value as its TrainConfig field's declared type (`int`, `float | None`, `bool`, `str`)."""
    kinds = typing.get_args(kind) or (kind,)
    optional, base = type(None) in kinds, next(k for k in kinds if k is not type(None))
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
    elif base is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "0", "false", "no"):
            return str(value).lower() in ("1", "true", "yes")
    elif isinstance(value, bool):
        pass  # YAML's true/false is not a number or a text
    elif isinstance(value, float) and not math.isfinite(value):
        raise SystemExit(f"{name}={value!r} is not a finite number")
    elif base in (int, float):
        try:
            number = base(value)  # int("2.5") and int(2.5)-style truncation are refused below
        except (TypeError, ValueError, OverflowError):  # int(.inf) overflows
            number = None
        if number is not None and not math.isfinite(number):  # float("nan") from a flag
            raise SystemExit(f"{name}={value!r} is not a finite number")
        if number is not None and (base is float or float(value) == number):
            return number
    elif base is str and isinstance(value, (str, int, float)):
        return str(value)
    expected = f"{base.__name__}{' or none' if optional else ''}"
    raise SystemExit(f"{name}={value!r} is not a valid {expected}")


def model_settings(model: dict) -> dict:
    """The `model:` section: each value parsed as its VLAPConfig field's declared type, then the whole validated by
    VLAPConfig itself (`method`)."""
    unknown = sorted(set(model) - set(MODEL_FIELDS))
    if unknown:
        derived = [name for name in unknown if name in DERIVED_MODEL_FIELDS]
        why = f" ({', '.join(derived)}: set by train.py)" if derived else ""
        raise SystemExit(f"unknown model field(s): {', '.join(unknown)}{why}; VLAPConfig's: {', '.join(MODEL_FIELDS)}")
    settings = {name: _parse(f"model.{name}", value, MODEL_FIELDS[name].type) for name, value in model.items()}
    try:
        method(settings)
    except (ValueError, TypeError) as error:
        raise SystemExit(f"model: {' '.join(str(error).split())}") from None
    return settings


def method(settings: dict) -> VLAPConfig:
    """The VLAPConfig that the `model:` settings describe (VLAPConfig's defaults for the rest). A LangBridge's
    vocabulary is built later, from the data and the LLMs: a one-word placeholder stands in for it here."""
    placeholders = {
        "langbridge": {"langbridge_tokens": ["?"], "langbridge_token_ids": [0]},
        "words": {"word_bridge_words": ["?"]},
    }
    return VLAPConfig(**settings, **placeholders.get(settings.get("bridge_type"), {}))


class EpochShuffle(torch.utils.data.Sampler):
    """A fresh permutation per epoch from (seed, epoch): the same order on every process, before and after resume."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


def complete_checkpoints(checkpoints: Path) -> list[Path]:
    """The step-K folders whose progress.json (written last) exists, oldest first."""
    complete = [
        path
        for path in checkpoints.glob("step-*")
        if re.fullmatch(r"step-\d+", path.name) and (path / "progress.json").exists()
    ]
    return sorted(complete, key=lambda path: int(path.name.split("-")[1]))


def find_checkpoint(checkpoints: Path, resume: str | None) -> Path | None:
    """The folder to resume from. "latest" picks the highest complete step-K (progress.json is written last).

    A checkpoint is data people copy between machines: one holding a pickle that would be loaded with
    weights_only=False (accelerate's custom_checkpoint_*.pkl; ours never write one) is refused, not unpickled.
    """
    if resume is None:
        return None
    if resume != "latest":
        if not (Path(resume) / "progress.json").exists():
            raise SystemExit(f"{resume} is not a complete checkpoint (no progress.json)")
        checkpoint = Path(resume)
    else:
        complete = complete_checkpoints(checkpoints)
        if not complete:
            raise SystemExit(
                f"--resume: {checkpoints} holds no complete checkpoint to resume; run without --resume to start "
                "afresh (with --overwrite-output-dir if the folder holds an unfinished run)"
            )
        checkpoint = complete[-1]
    pickles = sorted(path.name for path in checkpoint.glob("custom_checkpoint_*.pkl"))
    if pickles:
        raise SystemExit(
            f"{checkpoint} holds {', '.join(pickles)}: a pickle that could run code when loaded; "
            "refusing to resume from it"
        )
    return checkpoint


@contextlib.contextmanager
def output_dir_lock(output_dir: Path, is_main_process: bool):
    """Hold an exclusive lock on output_dir/.lock for the life of the run (the main process): a second run into the
    same folder, --resume included, stops at once instead of interleaving logs, checkpoints and exports."""
    if not is_main_process:
        yield
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / ".lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise SystemExit(f"output_dir: {output_dir} is in use by another training run ({holder})") from None
        lock.truncate(0)
        lock.write(f"pid {os.getpid()}")
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def claim_output_dir(output_dir: Path, resume: str | None, overwrite: bool) -> None:
    """A new run never mixes with an old one: an output_dir holding a run needs --resume or --overwrite-output-dir
    (which removes the old run's final/, checkpoints/ and logs first)."""
    previous = [name for name in ("final", "checkpoints", "metrics.jsonl") if (output_dir / name).exists()]
    if not previous or resume is not None:
        return
    if not overwrite:
        raise SystemExit(
            f"{output_dir} already holds a run ({', '.join(previous)}); pass --resume to continue it, "
            "--overwrite-output-dir to replace it, or another --output-dir"
        )
    for name in previous:
        path = output_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def save_checkpoint(accelerator: Accelerator, checkpoints: Path, progress: dict, keep: int) -> Path:
    """save_state into a temporary folder, renamed to step-K only once complete; keep the newest `keep`."""
    final, partial = checkpoints / f"step-{progress['step']}", checkpoints / f".partial-step-{progress['step']}"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / "progress.json").write_text(json.dumps(progress))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        for old in complete_checkpoints(checkpoints)[:-keep] if keep > 0 else []:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


LOGGED_LOSSES = ("loss", "caption_loss", "assignment_loss", "image_predicts_text", "text_predicts_image")


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bridge_arguments(config: TrainConfig, tokenizer, counts: torch.Tensor, captions: list[str], log) -> dict:
    """VLAPConfig fields of the bridge that train.py derives: none for a linear one; for a word bridge its words (the
    --init-bridge model's, a given JSON list, or the most frequent content words of the training `captions`); for a
    LangBridge its vocabulary (the --init-bridge model's strings, a given JSON list, the most frequent English words or
    caption tokens, each one token of this LLM and of every transfer LLM) as strings and this LLM's ids, and with
    --init-bridge its architecture."""
    bridge_type = method(config.model).bridge_type
    start = VLAPConfig.from_pretrained(config.init_bridge) if config.init_bridge else None
    if bridge_type == "words":
        if start is not None:
            words, source = start.word_bridge_words, config.init_bridge
        elif config.langbridge_vocabulary:
            words, source = read_vocabulary(config.langbridge_vocabulary), config.langbridge_vocabulary
        else:
            try:
                words, source = caption_words(captions, config.langbridge_vocab_size), "the training captions"
            except ValueError as error:
                raise SystemExit(f"train_data: {error}") from None
        log(f"word bridge: {len(words)} words ({source})")
        return {"word_bridge_words": words}
    if bridge_type != "langbridge":
        return {}
    if start is not None:  # continue a (moved) bridge: its strings re-indexed into this LLM, its architecture
        ids_of = string_to_id(tokenizer)
        log(f"LangBridge vocabulary: the {len(start.langbridge_tokens)} words of {config.init_bridge}")
        return {
            "langbridge_tokens": start.langbridge_tokens,
            "langbridge_token_ids": [ids_of.get(string, -1) for string in start.langbridge_tokens],
            "langbridge_hidden_size": start.langbridge_hidden_size or start.projection_dim,
            "langbridge_coefficients": start.langbridge_coefficients,
            "langbridge_activation_before_words": start.langbridge_activation_before_words,
        }
    transfer_llms = config.langbridge_transfer_llms or []
    transfer_llms = transfer_llms.split(",") if isinstance(transfer_llms, str) else transfer_llms
    others = [AutoTokenizer.from_pretrained(name.strip()) for name in transfer_llms]
    given = read_vocabulary(config.langbridge_vocabulary) if config.langbridge_vocabulary else None
    source = "given" if given else config.langbridge_vocabulary_source
    if source == "english":
        tokens, token_ids, report = english_vocabulary([tokenizer, *others], config.langbridge_vocab_size)
        source = f"english: the first {report['words_examined']:,} words of wordfreq, coverage {report['coverage']:.1%}"
    else:
        tokens, token_ids = select_vocabulary(counts, tokenizer, config.langbridge_vocab_size, others, given)
    log(f"LangBridge vocabulary: {len(tokens)} words shared with {len(others)} other LLM(s) ({source})")
    return {"langbridge_tokens": tokens, "langbridge_token_ids": token_ids}


def load_bridge(model, folder: str) -> None:
    """Start from the bridge weights of a saved model (its safetensors files, read key by key: the backbones stay
    on disk)."""
    from safetensors import safe_open

    state = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as weights:
            state |= {
                key.removeprefix("bridge."): weights.get_tensor(key)
                for key in weights.keys()
                if key.startswith("bridge.")
            }
    if not state:
        raise SystemExit(f"init_bridge={folder}: no bridge weights in its safetensors files")
    try:
        model.bridge.load_state_dict(state)
    except RuntimeError as error:
        raise SystemExit(
            f"init_bridge={folder}: its bridge does not fit this model ({' '.join(str(error).split())})"
        ) from None


def read_data(field: str, source: str, config: TrainConfig) -> tuple:
    """(dataset, the folder its image paths are relative to), loaded and validated (`vlap.data.validate`); what is
    wrong with it (missing, empty, unreadable, a bad row) is a one-line SystemExit naming `field`."""
    try:
        dataset, base_dir = load_source(source, config.data_format)
        validate(dataset, source, config.image_column, config.caption_column)
    except (ValueError, OSError, tarfile.TarError, datasets.exceptions.DatasetsError) as error:
        raise SystemExit(f"{field}: {' '.join(str(error).split())}") from None
    return dataset, base_dir


def load_training_set(config: TrainConfig, processor):
    """(training set, streamed?, caption token counts `[tokenizer length]`, captions): the data, validated before the
    first step, the counts the word prior is fitted from and the captions they count (a word bridge's words)."""
    dataset, base_dir = read_data("train_data", config.train_data, config)
    columns = (config.image_column, config.caption_column)
    streamed = isinstance(dataset, datasets.IterableDataset)
    if streamed:
        train_set = StreamedCaptionedImages(dataset, *columns, seed=config.seed)
        prior_rows = (row[config.caption_column] for row, _ in zip(dataset, range(config.word_prior_rows)))
    else:
        train_set = CaptionedImages(dataset, *columns, base_dir=base_dir, seed=config.seed)
        prior_rows = dataset[config.caption_column]
    captions = [caption for cell in prior_rows for caption in caption_list(cell)]
    counts = caption_token_counts(captions, processor, len(processor.tokenizer), config.max_caption_length)
    return train_set, streamed, counts, captions


def validation_loader(config: TrainConfig, collate) -> tuple:
    """(validation set, its loader), or (None, None) without `validation_data`."""
    if not config.validation_data:
        return None, None
    dataset, base_dir = read_data("validation_data", config.validation_data, config)
    columns = (config.image_column, config.caption_column)
    validation_set = CaptionedImages(dataset, *columns, base_dir=base_dir, seed=config.seed)
    return validation_set, torch.utils.data.DataLoader(validation_set, batch_size=config.batch_size, collate_fn=collate)


def build_model(config: TrainConfig, processor, counts: torch.Tensor, captions, log) -> VLAPForConditionalGeneration:
    """Frozen backbones + a fresh bridge (or the bridge of --init-bridge), its word prior fitted to `counts`, LoRA
    on the LLM when asked."""
    settings = {**config.model, **bridge_arguments(config, processor.tokenizer, counts, captions, log)}
    try:
        model = VLAPForConditionalGeneration.from_vision_text_pretrained(
            config.vision_model, config.text_model, **settings
        )
    except ValueError as error:  # the bridge does not fit these backbones (e.g. a word bridge on T5's tokenizer)
        raise SystemExit(f"model: {' '.join(str(error).split())}") from None
    if config.init_bridge:
        load_bridge(model, config.init_bridge)
    trainable, total = model.num_parameters(only_trainable=True), model.num_parameters()
    log(f"VLAP: {trainable:,} trainable parameters (the bridge) of {total:,}")
    rows = model.word_prior.numel()  # embedding rows, usually padded beyond the tokenizer's length
    model.fit_word_prior(torch.nn.functional.pad(counts[:rows], (0, max(rows - counts.numel(), 0))))
    if config.gradient_checkpointing:
        model.activation_checkpointing_enable()
    if config.lora:
        model = apply_lora(model, config.lora)
        log(f"LoRA {config.lora}: {model.num_parameters(only_trainable=True):,} trainable parameters")
    return model


def cache_vision_features(config: TrainConfig, model, processor, train_set, streamed: bool, accelerator) -> None:
    """Compute the frozen vision output of every training image once (under `cache_features`); training then reads
    it instead of running the vision model. Too many unreadable images stop the run here."""
    if streamed:
        raise SystemExit("--cache-features needs a map-style dataset (not streamed webdataset shards)")
    train_set.features = build_feature_cache(model, processor, train_set, config.cache_features, accelerator)
    if len(train_set.features.bad) > config.max_bad_fraction * len(train_set):
        raise SystemExit(
            f"{len(train_set.features.bad)} of {len(train_set)} images are unreadable (more than "
            f"max_bad_fraction={config.max_bad_fraction}): {train_set.describe_rows(train_set.features.bad)}"
        )


def cosine_schedule(config: TrainConfig, optimizer, loader, streamed: bool):
    """(scheduler, total optimiser steps): warmup then cosine decay, stepped by hand once per optimiser step
    whatever the process count."""
    if streamed and config.max_steps is None:
        raise SystemExit("a streamed dataset has no length: set max_steps")
    steps_per_epoch = None if streamed else max(len(loader) // config.gradient_accumulation_steps, 1)
    total_steps = config.max_steps or config.num_epochs * steps_per_epoch
    warmup = (
        config.warmup_steps if config.warmup_steps is not None else round(config.warmup_epochs * (steps_per_epoch or 0))
    )
    return get_cosine_schedule_with_warmup(optimizer, min(warmup, total_steps), total_steps), total_steps


def checkpoint_bridge_only(accelerator: Accelerator, model) -> None:
    """Checkpoints hold the trained tensors (bridge; LoRA adapters) and the word statistics only: the backbones are
    frozen and reloaded from their sources."""
    unwrapped = accelerator.unwrap_model(model)
    saved = {name for name, p in unwrapped.named_parameters() if p.requires_grad}
    saved.update(name for name, _ in unwrapped.named_buffers() if name.endswith(WORD_STATISTICS))

    def keep_saved(models, weights, _directory):
        for state in weights:
            for key in [key for key in state if key not in saved]:
                del state[key]

    accelerator.register_save_state_pre_hook(keep_saved)


def resume_progress(accelerator: Accelerator, checkpoint: Path | None, scheduler, output_dir: Path) -> dict:
    """The training progress (step, epoch, batches into it, images, unreadable rows, best validation loss): fresh, or
    restored with the weights, optimiser, scheduler and RNG states from `checkpoint`, dropping what the interrupted
    run logged after it."""
    progress = {"step": 0, "epoch": 0, "batches_in_epoch": 0, "images": 0, "bad_rows": [], "best_val_loss": None}
    if checkpoint is None:
        return progress
    accelerator.load_state(str(checkpoint), strict=False)
    progress = json.loads((checkpoint / "progress.json").read_text())
    scheduler.load_state_dict(progress.pop("scheduler"))  # JSON, not a pickle
    accelerator.print(f"resumed from {checkpoint} at step {progress['step']}")
    metrics_path = output_dir / "metrics.jsonl"
    if accelerator.is_main_process and metrics_path.exists():
        records = [parsed_record(line) for line in metrics_path.read_text(errors="replace").splitlines()]
        kept = [r for r in records if r is not None and r["step"] <= progress["step"]]
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    return progress


def parsed_record(line: str) -> dict | None:
    """One metrics.jsonl line, or None for a line a kill tore in half (or any line without a step)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None


def write_metrics(accelerator: Accelerator, output_dir: Path, record: dict) -> None:
    """One JSON line per step / evaluation in output_dir/metrics.jsonl (loss curves without a tracker)."""
    if accelerator.is_main_process:
        with open(output_dir / "metrics.jsonl", "a") as metrics_file:
            metrics_file.write(json.dumps(record) + "\n")


def evaluate(accelerator, model, processor, validation_loader, eval_images, config, progress: dict, output_dir) -> None:
    """The validation loss (when there is validation data; the best one kept in `progress`) and captions of the
    first `num_eval_images` images, logged and written to metrics.jsonl."""
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.eval()
    metrics = {}
    if validation_loader is not None:
        losses = []
        with torch.no_grad():
            for batch in validation_loader:
                batch.pop("bad_rows"), batch.pop("num_items")
                if "input_ids" in batch:
                    losses.append(model(**batch).loss.reshape(1))
        if losses:
            metrics["val_loss"] = accelerator.gather_for_metrics(torch.cat(losses)).mean().item()
            best = progress["best_val_loss"]
            progress["best_val_loss"] = metrics["val_loss"] if best is None else min(best, metrics["val_loss"])
    if accelerator.is_main_process:
        images = [eval_images.image(i) for i in range(min(config.num_eval_images, len(eval_images)))]
        images = [image for image in images if image is not None]
        if images:
            ids = unwrapped.generate(**processor(images=images).to(accelerator.device), max_new_tokens=30)
            metrics["captions"] = processor.batch_decode(ids, skip_special_tokens=True)
    accelerator.log({k: v for k, v in metrics.items() if k != "captions"}, step=progress["step"])
    write_metrics(accelerator, output_dir, {"step": progress["step"], **metrics})
    accelerator.print(f"[eval step {progress['step']}] " + json.dumps(metrics))
    unwrapped.train()


def step_logs(accelerator: Accelerator, out, scheduler, input_ids, content_words) -> dict:
    """The step's losses (mean over processes), learning rate and, with L_map, the assignment diagnostics."""
    parts = {name: getattr(out, name) for name in LOGGED_LOSSES if getattr(out, name) is not None}
    reduced = accelerator.reduce(torch.stack(list(parts.values())).detach(), "mean").tolist()
    logs = {**dict(zip(parts, reduced)), "lr": scheduler.get_last_lr()[0]}
    if out.text_targets is not None:
        logs.update(assignment_diagnostics(out.image_targets, out.text_targets, input_ids, content_words))
    return logs


def export(accelerator: Accelerator, model, processor, output_dir: Path) -> Path:
    """save_pretrained + processor into output_dir/final, loadable with AutoModel / pipeline and trust_remote_code.
    Written to a temporary folder and renamed into place: a kill at any moment leaves a complete final/ or none."""
    final, partial = output_dir / "final", output_dir / ".partial-final"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        merge_lora(accelerator.unwrap_model(model)).save_pretrained(partial)
        processor.save_pretrained(partial)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
    return final


def stop_if_not_finite(accelerator: Accelerator, loss: float, trainable: list, step: int, checkpoints: Path) -> None:
    """A non-finite loss or trained weight (a diverged run: learning rate, clipping, data) stops training at the step
    it appears, on every process, before it is logged as normal, checkpointed or exported."""
    # Checked on the device, one bool per tensor, so the step syncs once (the reduce), not once per trained tensor.
    weights_bad = torch.stack([~torch.isfinite(p).all() for p in trainable]).any().to(accelerator.device)
    loss_bad = torch.tensor(not math.isfinite(loss), device=accelerator.device)
    loss_bad, weights_bad = accelerator.reduce(torch.stack([loss_bad, weights_bad]).float(), "sum").tolist()
    if loss_bad or weights_bad:
        what = " and ".join(name for name, bad in (("the loss", loss_bad), ("the trained weights", weights_bad)) if bad)
        complete = complete_checkpoints(checkpoints)
        last = f"; the last good checkpoint is {complete[-1]}" if complete else ""
        raise SystemExit(
            f"step {step}: {what} became NaN or infinite (check learning_rate, max_grad_norm and the data); "
            f"training stopped, nothing exported{last}"
        )


def make_accelerator(config: TrainConfig, output_dir: Path) -> Accelerator:
    """The Accelerator of the launch; an FSDP launch that accelerate would not shard (no GPU; `cpu: true`) stops with
    one line instead of training unsharded or failing deep inside accelerate."""
    fsdp_requested = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    try:
        accelerator = Accelerator(
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            mixed_precision=config.mixed_precision,
            log_with=None if config.report_to == "none" else config.report_to,
            project_dir=str(output_dir),
            cpu=config.cpu,
        )
    except RuntimeError as error:
        if not fsdp_requested:
            raise
        raise SystemExit(f"FSDP was requested but accelerate refuses it on this machine: {error} {NO_FSDP}") from None
    if fsdp_requested and accelerator.distributed_type != DistributedType.FSDP:
        raise SystemExit(f"FSDP was requested but accelerate set up {accelerator.distributed_type.value}. {NO_FSDP}")
    return accelerator


NO_FSDP = (
    "FSDP shards over GPUs (accelerate refuses it on CPU, and `cpu: true` turns it off); on CPU, launch without "
    "--use_fsdp / an FSDP config: `accelerate launch --num_processes N train.py` splits the batch instead."
)


def main(argv=None) -> Path:
    config = parse_config(argv)
    output_dir = Path(config.output_dir)
    accelerator = make_accelerator(config, output_dir)
    with output_dir_lock(output_dir, accelerator.is_main_process):
        try:
            return run(config, accelerator, output_dir)
        except (OSError, RuntimeError) as error:  # torch.save reports a full disk as a RuntimeError
            if getattr(error, "errno", None) not in (errno.ENOSPC, errno.EDQUOT) and "No space left" not in str(error):
                raise
            raise SystemExit(
                f"{getattr(error, 'filename', None) or output_dir}: no space left on the device while writing the run; "
                "free some, then --resume continues from the last complete checkpoint"
            ) from None


def run(config: TrainConfig, accelerator: Accelerator, output_dir: Path) -> Path:
    """data -> word prior -> (feature cache) -> optimiser -> resume -> steps -> export, in output_dir (locked)."""
    set_seed(config.seed)
    checkpoints = output_dir / "checkpoints"
    checkpoint = find_checkpoint(checkpoints, config.resume)
    if accelerator.is_main_process:
        claim_output_dir(output_dir, config.resume, config.overwrite_output_dir)

    # ---- data, word prior, models
    processor = VLAPProcessor.from_vision_text_pretrained(
        config.vision_model, config.text_model, prompt=method(config.model).prompt
    )
    train_set, streamed, counts, captions = load_training_set(config, processor)
    model = build_model(config, processor, counts, captions, accelerator.print).to(accelerator.device)
    if config.cache_features:
        cache_vision_features(config, model, processor, train_set, streamed, accelerator)
    collate = Collator(processor, config.max_caption_length)
    validation_set, validation_batches = validation_loader(config, collate)
    sampler = None if streamed else EpochShuffle(len(train_set), config.seed)
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=config.batch_size, sampler=sampler, collate_fn=collate, drop_last=True
    )

    # ---- optimiser, schedule, resume
    is_t5 = bool(model.config.text_config.is_encoder_decoder)
    learning_rate = config.learning_rate if config.learning_rate is not None else (1e-2 if is_t5 else 1e-4)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=config.weight_decay)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    if validation_batches is not None:
        validation_batches = accelerator.prepare(validation_batches)
    if not streamed and len(loader) == 0:
        raise SystemExit(
            f"batch_size={config.batch_size} x {accelerator.num_processes} process(es) is more than the "
            f"{len(train_set)} training images: no full batch to train on"
        )
    scheduler, total_steps = cosine_schedule(config, optimizer, loader, streamed)
    checkpoint_bridge_only(accelerator, model)
    progress = resume_progress(accelerator, checkpoint, scheduler, output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "train_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    settings = {**dataclasses.asdict(config), **{f"model.{k}": v for k, v in config.model.items()}}
    accelerator.init_trackers("vlap", config={k: v for k, v in settings.items() if v is not None and k != "model"})
    eval_images = validation_set or train_set
    run_evaluation = functools.partial(
        evaluate, accelerator, model, processor, validation_batches, eval_images, config, progress, output_dir
    )

    # ---- the loop
    rows = accelerator.unwrap_model(model).word_prior.numel()
    content_words = (
        content_word_mask(processor.tokenizer, rows) if method(config.model).assignment_loss_weight else None
    )
    model.train()
    bad_rows = set(progress["bad_rows"])
    bar = tqdm(total=total_steps, initial=progress["step"], disable=not accelerator.is_local_main_process)
    start_time, start_images = time.time(), progress["images"]
    step, epoch = progress["step"], progress["epoch"]
    while step < total_steps:
        loader.set_epoch(epoch)
        train_set.set_epoch(epoch)
        skip = progress["batches_in_epoch"] if epoch == progress["epoch"] else 0
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        if skip:
            batches.set_epoch(epoch)
        batches_in_epoch = skip
        for batch in batches:
            batches_in_epoch += 1
            bad_rows.update(batch.pop("bad_rows"))
            progress["images"] += batch.pop("num_items") * accelerator.num_processes
            if "input_ids" not in batch:
                where = train_set.describe_rows(bad_rows) if not streamed else f"rows {sorted(bad_rows)[-10:]}"
                raise SystemExit(f"every image of a batch was unreadable: {where}")
            with accelerator.accumulate(model):
                out = model(**batch)
                accelerator.backward(out.loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            step += 1
            # The union over processes (a row can turn up on several across epochs, and a resumed run starts every
            # process from the saved union): counted once each.
            bad_rows = set(gather_object(sorted(bad_rows))) if accelerator.num_processes > 1 else bad_rows
            seen = len(train_set) if not streamed else max(progress["images"], 1000)
            if len(bad_rows) > config.max_bad_fraction * seen:
                where = train_set.describe_rows(bad_rows) if not streamed else f"rows {sorted(bad_rows)[:10]}"
                raise SystemExit(
                    f"{len(bad_rows)} unreadable images, more than max_bad_fraction="
                    f"{config.max_bad_fraction} of {seen}: {where}"
                )
            logs = step_logs(accelerator, out, scheduler, batch["input_ids"], content_words)
            stop_if_not_finite(accelerator, logs["loss"], trainable, step, checkpoints)
            images_per_second = (progress["images"] - start_images) / max(time.time() - start_time, 1e-9)
            accelerator.log({**logs, "images_per_second": images_per_second}, step=step)
            write_metrics(accelerator, output_dir, {"step": step, **logs})
            bar.update(1)
            bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}", img_s=f"{images_per_second:.1f}")
            progress.update(step=step, epoch=epoch, batches_in_epoch=batches_in_epoch, bad_rows=sorted(bad_rows))
            if config.eval_steps and step % config.eval_steps == 0:
                run_evaluation()
            if config.checkpointing_steps and (step % config.checkpointing_steps == 0 or step == total_steps):
                save_checkpoint(
                    accelerator,
                    checkpoints,
                    {**progress, "scheduler": scheduler.state_dict()},
                    config.checkpoints_total_limit,
                )
            if step >= total_steps:
                break
        else:  # the epoch ran out (not the step budget): the next one starts from its first batch
            epoch += 1
            progress.update(epoch=epoch, batches_in_epoch=0)
    bar.close()
    if not (config.eval_steps and step % config.eval_steps == 0):
        run_evaluation()

    # ---- export
    final = export(accelerator, model, processor, output_dir)
    elapsed = time.time() - start_time
    summary = {
        "steps": step,
        "time_s": round(elapsed, 1),
        "images_per_s": round((progress["images"] - start_images) / max(elapsed, 1e-9), 2),
        "peak_memory_mb": round(peak_memory_mb(accelerator.device), 1),
        "best_val_loss": progress["best_val_loss"],
        "unreadable_images": len(bad_rows),
        "model": str(final),
    }
    accelerator.print("summary: " + json.dumps(summary))
    accelerator.end_training()
    return final


if __name__ == "__main__":
    main()
