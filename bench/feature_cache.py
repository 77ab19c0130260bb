"""Epoch time with and without the frozen-feature cache, side by side on the same models and data.

An epoch from images decodes, preprocesses and runs the frozen vision model for every image; an epoch from the
cache reads the stored vision outputs. Both run the same training steps (forward + backward + AdamW) through the
trainer's own data path (CaptionedImages + Collator). The vision model has CLIP ViT-B/32's full size (what the cache
saves); the LLM is the bench's small T5. The one-off cost of building the cache is reported too.

    python -m bench.feature_cache [--images 64] [--batch-size 16] [--json out.json]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import CLIPImageProcessorPil, PreTrainedTokenizerFast

from bench.common import device_name, photos, vlap_model, write_report
from modeling_vlap import VLAPProcessor
from vlap.data import CaptionedImages, Collator, load_source
from vlap.features import build_feature_cache


def word_level_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def run_epoch(model, loader) -> float:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    start = time.perf_counter()
    for batch in loader:
        batch.pop("bad_rows"), batch.pop("num_items")
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json")
    args = parser.parse_args()
    words = "a red green blue circle square triangle on plain background picture of".split()
    processor = VLAPProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}),
        tokenizer=word_level_tokenizer(words),
    )
    model = vlap_model("t5", full_size_vision=True).train()  # the cache saves the vision model: give it its real size
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        with open(root / "pairs.jsonl", "w") as pairs:
            for i, image in enumerate(photos(args.images)):
                image.save(root / f"{i}.png")
                pairs.write(
                    json.dumps({"image": f"{i}.png", "caption": f"a {words[1 + i % 3]} {words[4 + i % 3]}"}) + "\n"
                )
        dataset, base_dir = load_source(str(root / "pairs.jsonl"))
        images = CaptionedImages(dataset, "image", "caption", base_dir=base_dir)
        collate = Collator(processor)

        def loader(view):
            return torch.utils.data.DataLoader(view, batch_size=args.batch_size, collate_fn=collate)

        from_images = run_epoch(model, loader(images))
        start = time.perf_counter()
        features = build_feature_cache(model, processor, images, root / "cache", Accelerator(cpu=True), args.batch_size)
        build = time.perf_counter() - start
        cached = CaptionedImages(dataset, "image", "caption", base_dir=base_dir, features=features)
        from_cache = run_epoch(model, loader(cached))
        from_images_again = run_epoch(model, loader(images))  # bracket the cached epoch against drift
    from_images = min(from_images, from_images_again)
    results = {
        "device": device_name(),
        "images": args.images,
        "batch_size": args.batch_size,
        "epoch_seconds_from_images": from_images,
        "epoch_seconds_from_cache": from_cache,
        "cache_build_seconds": build,
        "speedup": from_images / from_cache,
    }
    print(
        f"epoch from images {from_images:.2f}s, from the feature cache {from_cache:.2f}s: "
        f"{results['speedup']:.2f}x faster (goal >= 3); building the cache once took {build:.2f}s"
    )
    write_report(results, args.json)


if __name__ == "__main__":
    main()
