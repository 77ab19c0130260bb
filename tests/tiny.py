"""Tiny backbones built offline from configs, with tokenizers trained in milliseconds.

`save_tiny_backbones(dir)` writes Hub-shaped folders (weights, config, tokenizer / image processor), so tests exercise
the real `from_pretrained` loading code with local paths.
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
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

COLOURS = ["red", "green", "blue", "yellow", "black", "white", "purple", "orange", "gray", "brown"]
SHAPES = ["circle", "square", "triangle", "rectangle", "star", "cross"]
CORPUS = [f"a {c} {s} on a plain background" for c in COLOURS for s in SHAPES] + [
    "A picture of",
    "Question: what colour is the shape? Answer:",
    "Question: is there a circle? Answer: yes no",
]
IMAGE_SIZE = 32


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
        hidden_size=24, intermediate_size=48, num_attention_heads=2, num_hidden_layers=2,
        image_size=IMAGE_SIZE, patch_size=8, projection_dim=16,
    )  # fmt: skip


def image_processor() -> CLIPImageProcessorPil:
    return CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def language_model(kind: str, tokenizer: PreTrainedTokenizerFast):
    """A tiny random T5, OPT or Llama whose vocabulary is the tokenizer's.

    Initialised wider than the library default, so that the random LLM's predictions depend on its input and a
    bridge can lower the caption loss (at std 0.02 every prefix gives near-uniform logits).
    """
    vocab = len(tokenizer)
    special = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    if kind == "t5":
        config = T5Config(
            vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            decoder_start_token_id=tokenizer.pad_token_id, **special,
        )  # fmt: skip
        return T5ForConditionalGeneration(config)
    if kind == "opt":
        config = OPTConfig(
            vocab_size=vocab, hidden_size=32, word_embed_proj_dim=16, ffn_dim=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=128, bos_token_id=tokenizer.bos_token_id,
            init_std=0.2, **special,
        )  # fmt: skip
        return OPTForCausalLM(config)
    if kind == "llama":
        config = LlamaConfig(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True, initializer_range=0.2,
            bos_token_id=tokenizer.bos_token_id, **special,
        )  # fmt: skip
        return LlamaForCausalLM(config)
    raise ValueError(kind)


def save_tiny_backbones(root: Path, seed: int = 0) -> dict[str, Path]:
    """Save a tiny CLIP (full dual encoder, as on the Hub), CLIP vision model, T5, OPT and Llama under `root`."""
    torch.manual_seed(seed)
    paths = {}
    paths["clip"] = root / "clip"
    full_clip = CLIPConfig(
        vision_config=clip_vision_config().to_dict(),
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2, "num_hidden_layers": 1,
                     "vocab_size": 64, "max_position_embeddings": 16, "bos_token_id": 1, "eos_token_id": 2,
                     "pad_token_id": 0},
        projection_dim=16,
    )  # fmt: skip
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
