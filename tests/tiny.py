"""Test helpers. Tiny backbones built offline from configs, with tokenizers trained in milliseconds; train.py and
fresh-process runners; a loopback stand-in for the Hub.

`save_tiny_backbones(dir)` writes Hub-shaped folders (weights, config, tokenizer / image processor), so tests exercise
the real `from_pretrained` loading code with local paths.
"""

import base64
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import torch
import yaml
from PIL import Image
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    AutoTokenizer,
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

from modeling_vlap import VLAPForConditionalGeneration, VLAPProcessor
from vlap.data import caption_token_counts
from vlap.langbridge import select_vocabulary

COLOURS = ["red", "green", "blue", "yellow", "black", "white", "purple", "orange", "gray", "brown"]
SHAPES = ["circle", "square", "triangle", "rectangle", "star", "cross"]
CORPUS = [f"a {c} {s} on a plain background" for c in COLOURS for s in SHAPES] + [
    "A picture of",
    "Question: what colour is the shape? Answer:",
    "Question: is there a circle? Answer: yes no",
]
IMAGE_SIZE = 32
REPO = Path(__file__).resolve().parent.parent


def bpe_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2/OPT/Llama-like) with <s>, </s>, <pad>, <unk>."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def unigram_tokenizer() -> PreTrainedTokenizerFast:
    """SentencePiece-style Unigram with Metaspace (T5-like): <pad>=0, </s>=1, <unk>=2."""
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=200, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tokenizer.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def clip_vision_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=24,
        intermediate_size=48,
        num_attention_heads=2,
        num_hidden_layers=2,
        image_size=IMAGE_SIZE,
        patch_size=8,
        projection_dim=16,
    )


def image_processor() -> CLIPImageProcessorPil:
    return CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )


def language_model(kind: str, tokenizer: PreTrainedTokenizerFast):
    """A tiny random T5, OPT or Llama whose vocabulary is the tokenizer's.

    Initialised wider than the library default, so that the random LLM's predictions depend on its input and a
    bridge can lower the caption loss (at std 0.02 every prefix gives near-uniform logits).
    """
    vocab = len(tokenizer)
    special = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    if kind == "t5":
        config = T5Config(
            vocab_size=vocab,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            decoder_start_token_id=tokenizer.pad_token_id,
            **special,
        )
        return T5ForConditionalGeneration(config)
    if kind == "opt":
        config = OPTConfig(
            vocab_size=vocab,
            hidden_size=32,
            word_embed_proj_dim=16,
            ffn_dim=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=128,
            bos_token_id=tokenizer.bos_token_id,
            init_std=0.2,
            **special,
        )
        return OPTForCausalLM(config)
    if kind == "llama":
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            tie_word_embeddings=True,
            initializer_range=0.2,
            bos_token_id=tokenizer.bos_token_id,
            **special,
        )
        return LlamaForCausalLM(config)
    raise ValueError(kind)


def save_tiny_backbones(root: Path, seed: int = 0) -> dict[str, Path]:
    """Save a tiny CLIP (full dual encoder, as on the Hub), CLIP vision model, T5, OPT and Llama under `root`."""
    torch.manual_seed(seed)
    paths = {}
    paths["clip"] = root / "clip"
    full_clip = CLIPConfig(
        vision_config=clip_vision_config().to_dict(),
        text_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_attention_heads": 2,
            "num_hidden_layers": 1,
            "vocab_size": 64,
            "max_position_embeddings": 16,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
        },
        projection_dim=16,
    )
    CLIPModel(full_clip).save_pretrained(paths["clip"])
    image_processor().save_pretrained(paths["clip"])
    paths["clip_vision"] = root / "clip_vision"
    CLIPVisionModel(clip_vision_config()).save_pretrained(paths["clip_vision"])
    image_processor().save_pretrained(paths["clip_vision"])
    for kind, tokenizer in (("t5", unigram_tokenizer()), ("opt", bpe_tokenizer()), ("llama", bpe_tokenizer())):
        paths[kind] = root / kind
        language_model(kind, tokenizer).save_pretrained(paths[kind])
        tokenizer.save_pretrained(paths[kind])
    return paths


def shape_image(colour: str, shape: str, size: int = 32):
    """A coloured shape on white, like easy-vqa: enough signal for a tiny bridge to learn from."""
    from PIL import Image, ImageColor, ImageDraw

    image = Image.new("RGB", (size, size), "white")
    draw, fill, box = ImageDraw.Draw(image), ImageColor.getrgb(colour), (6, 6, size - 6, size - 6)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(size // 2, 6), (6, size - 6), (size - 6, size - 6)], fill=fill)
    else:
        draw.rectangle(box, fill=fill)
    return image


def write_caption_folder(root: Path, num_images: int = 24) -> Path:
    """An image folder with metadata.jsonl (file_name, caption: two captions per image), the imagefolder layout."""
    import json

    root.mkdir(parents=True, exist_ok=True)
    shapes = ["circle", "square", "triangle"]
    with open(root / "metadata.jsonl", "w") as metadata:
        for i in range(num_images):
            colour, shape = COLOURS[i % 5], shapes[(i // 5) % 3]
            shape_image(colour, shape).save(root / f"{i:04d}.png")
            captions = [f"a {colour} {shape}", f"a {colour} {shape} on a plain background"]
            metadata.write(json.dumps({"file_name": f"{i:04d}.png", "caption": captions}) + "\n")
    return root


def images(n: int, size=(40, 48)) -> list[Image.Image]:
    """`n` random RGB images (seeded by their index)."""
    return [Image.fromarray(np.random.RandomState(i).randint(0, 255, (*size, 3), dtype=np.uint8)) for i in range(n)]


def build(backbones, llm: str, **config_kwargs):
    """A tiny VLAP (the tiny CLIP + `llm`) and its processor, seeded."""
    torch.manual_seed(0)
    model = VLAPForConditionalGeneration.from_vision_text_pretrained(
        str(backbones["clip"]), str(backbones[llm]), **config_kwargs
    )
    processor = VLAPProcessor.from_vision_text_pretrained(str(backbones["clip"]), str(backbones[llm]))
    return model, processor


def save_tiny_vlap(backbones, folder: Path, llm: str = "llama") -> Path:
    """`build` saved as an exported model folder (weights, config, remote code, processor)."""
    model, processor = build(backbones, llm)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# A fresh process where this repository cannot be imported: everything must come from the saved folder.
NO_REPO_IMPORTS = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class NoRepoImports(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("modeling_vlap", "vlap"):
                raise ImportError(f"{name} must come from the saved folder, not from the repository")

    sys.meta_path.insert(0, NoRepoImports())
    """
)
LOAD_IN_FRESH_PROCESS = NO_REPO_IMPORTS + textwrap.dedent(
    """
    from PIL import Image
    from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor, pipeline

    folder, image_path, settings = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    LABELS, TEMPLATE = ["red circle", "blue square", "green triangle"], "a photo of a {}."
    QUESTION = "Question: what colour is the shape? Answer:"
    image = Image.open(image_path)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert type(AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)) is type(model)
    ids = model.generate(**processor(images=[image]), **settings)
    captioner = pipeline("image-to-text", model=folder, trust_remote_code=True)
    features = pipeline("image-feature-extraction", model=folder, trust_remote_code=True)
    print(json.dumps({
        "model_class": type(model).__name__,
        "processor_class": type(processor).__name__,
        "ids": ids.tolist(),
        "caption": captioner(image, **settings)[0]["generated_text"],
        "answer": captioner(image, prompt=QUESTION, **settings)[0]["generated_text"],
        "image_features": model.get_image_features(processor(images=[image])["pixel_values"]).tolist(),
        "zero_shot": pipeline("zero-shot-image-classification", model=folder, trust_remote_code=True)(
            image, candidate_labels=LABELS, hypothesis_template=TEMPLATE),
        "tokens": features(image, return_tensors=True).tolist(),
        "pooled": features(image, pool=True),
    }))
    """
)


def load_in_fresh_process(
    folder: Path, image: Path, settings: dict, python=sys.executable, script: str = LOAD_IN_FRESH_PROCESS
) -> tuple[dict, str]:
    """Run `script` (LOAD_IN_FRESH_PROCESS: argv folder, image, settings JSON; its last stdout line JSON) with `python`
    (offline, PYTHONPATH cleared, in the image's folder) on a saved model folder: (its outputs, its stderr); a failure
    shows the stderr."""
    path = Path(image).parent / "load_in_fresh_process.py"
    path.write_text(script)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONPATH": ""}
    command = [str(python), str(path), str(folder), str(image), json.dumps(settings)]
    result = subprocess.run(command, cwd=path.parent, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


CAPTIONS = ["a red circle", "a blue square on a plain background", "a green star", "a white cross"]


def langbridge(backbones, llm="llama", size=40, coefficients="softmax", transfer_to=()):
    tokenizer = AutoTokenizer.from_pretrained(backbones[llm])
    counts = caption_token_counts(CORPUS, VLAPProcessor(image_processor(), tokenizer), len(tokenizer))
    others = [AutoTokenizer.from_pretrained(backbones[name]) for name in transfer_to]
    tokens, ids = select_vocabulary(counts, tokenizer, size, others)
    model, processor = build(
        backbones,
        llm,
        bridge_type="langbridge",
        langbridge_tokens=tokens,
        langbridge_token_ids=ids,
        langbridge_coefficients=coefficients,
        num_visual_tokens=4,
    )
    return model.eval(), processor


# train.py runs offline in a subprocess.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def write_config(path: Path, backbones, data: Path, output_dir: Path, **overrides) -> Path:
    config = {
        "vision_model": str(backbones["clip"]),
        "text_model": str(backbones["opt"]),
        "train_data": str(data),
        "batch_size": 4,
        "max_steps": 12,
        "learning_rate": 1e-3,
        "warmup_steps": 2,
        "checkpointing_steps": 4,
        "eval_steps": 0,
        "output_dir": str(output_dir),
        "seed": 3,
        "cpu": True,
        **overrides,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def run_train(config: Path, *extra, launcher=(sys.executable,), check=True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [*launcher, str(REPO / "train.py"), "--config", str(config), *extra],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


# A loopback stand-in for the Hugging Face Hub: the endpoints huggingface_hub uses to create a repository, upload a
# folder (every file as a regular, inline commit operation), and list and download it back. Every request is recorded
# (method, path, headers, body) so tests can check what was sent.
#
#     with HubStub() as hub:            # then HF_ENDPOINT=hub.endpoint
#         ...
#         hub.repos["user/name"]["main"]   # {path: bytes}
#
class HubStub:
    def __init__(self):
        self.repos: dict[str, dict[str, dict[str, bytes]]] = {}  # repo id -> revision -> path -> content
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _reply(self, status: int, body=b"", headers=None):
                data = json.dumps(body).encode() if not isinstance(body, bytes) else body
                self.send_response(status)
                for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = unquote(urlparse(self.path).path)
                stub.requests.append(
                    {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
                )
                status, reply, headers = stub.route(self.command, path, body)
                self._reply(status, reply, headers)

            do_GET = do_POST = do_HEAD = do_PUT = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def sha(files: dict[str, bytes]) -> str:
        digest = hashlib.sha1()
        for path in sorted(files):
            digest.update(path.encode() + hashlib.sha1(files[path]).digest())
        return digest.hexdigest()

    def _revision(self, repo: str, revision: str) -> dict[str, bytes] | None:
        revisions = self.repos.get(repo, {})
        if revision in revisions:
            return revisions[revision]
        return next((files for files in revisions.values() if self.sha(files) == revision), None)

    def route(self, method: str, path: str, body: bytes):
        parts = path.strip("/").split("/")
        if path == "/api/agent-harnesses":
            return 200, {}, None
        if path == "/api/validate-yaml":
            return 200, {"errors": [], "warnings": []}, None
        if path == "/api/repos/create":
            request = json.loads(body)
            repo = f"{request['organization']}/{request['name']}" if request.get("organization") else request["name"]
            self.repos.setdefault(repo, {"main": {}})
            return 200, {"url": f"{self.endpoint}/{repo}", "name": repo}, None
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo, action, rest = f"{parts[2]}/{parts[3]}", parts[4] if len(parts) > 4 else "", "/".join(parts[5:])
            if repo not in self.repos:
                return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
            if action == "preupload":
                files = json.loads(body)["files"]
                return (
                    200,
                    {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]},
                    None,
                )
            if action == "commit":
                files = dict(self.repos[repo].get(rest, self.repos[repo]["main"]))
                for line in body.decode().splitlines():
                    operation = json.loads(line)
                    if operation["key"] == "file":
                        files[operation["value"]["path"]] = base64.b64decode(operation["value"]["content"])
                self.repos[repo][rest] = files
                return (
                    200,
                    {"commitUrl": f"{self.endpoint}/{repo}/commit/{self.sha(files)}", "commitOid": self.sha(files)},
                    None,
                )
            if action == "branch":
                self.repos[repo].setdefault(rest, dict(self.repos[repo]["main"]))
                return 200, {}, None
            if action in ("revision", "tree", ""):
                revision = rest.split("/")[0] if rest else "main"
                files = self._revision(repo, revision)
                if files is None:
                    return 404, {"error": "Revision not found"}, {"X-Error-Code": "RevisionNotFound"}
                if action == "tree":
                    entries = [
                        {"type": "file", "path": p, "size": len(c), "oid": hashlib.sha1(c).hexdigest()}
                        for p, c in sorted(files.items())
                    ]
                    return 200, entries, None
                info = {
                    "id": repo,
                    "sha": self.sha(files),
                    "private": False,
                    "siblings": [{"rfilename": p} for p in sorted(files)],
                }
                return 200, info, None
        if len(parts) >= 5 and parts[2] == "resolve":
            repo, revision, file_path = f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:])
            files = self._revision(repo, revision)
            if files is None or file_path not in files:
                return 404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"}
            content = files[file_path]
            headers = {
                "X-Repo-Commit": self.sha(files),
                "ETag": f'"{hashlib.sha1(content).hexdigest()}"',
                "Content-Type": "application/octet-stream",
            }
            return 200, content, headers
        return 404, {"error": f"stub Hub: no route for {method} {path}"}, None
