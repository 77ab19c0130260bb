"""Why a trained prefix does not move between LLMs, measured: how well one linear map carries SmolLM2-135M's word
embeddings onto Gemma 3 270M's, and what the same map does to a prefix trained on SmolLM2.

1. The map: least squares from SmolLM2's to Gemma 3's input embeddings of the LangBridge vocabulary (the 19,200 most
   frequent English words both spell as one token), fitted on 90 % of the words; on the other 10 %, the mean cosine of
   mapped and true Gemma embeddings and how often the mapped word's nearest Gemma word (among all 19,200) is itself.
2. The prefix: `make demo`'s trained linear bridge (`--model`), composed with that map (fitted on all words) and
   scaled by each `--scales`, captions validation images through Gemma 3 (BOS first, "A picture of"); scored by
   colour AND shape named, beside the source model on SmolLM2. Also the prefix tokens' norm against the words' and
   their cosine to the nearest word.

    python -m bench.prefix_transfer [--model outputs/demo/vlap/final] [--images 64] [--scales 1 0.3 0.1 0.03] [--json F]
"""

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from bench.common import write_report
from experiments.assets import efficientnet_lite0, gemma3_270m, smollm2_135m, vision_states
from experiments.shape_world import split_train
from experiments.shapes import caption_is_right
from modeling_vlap import VLAPForConditionalGeneration, VLAPProcessor
from vlap.langbridge import english_vocabulary, string_to_id
from vlap.tasks import caption, load


def word_map_quality(source: torch.Tensor, target: torch.Tensor, seed: int = 0) -> dict:
    """Fit on 90 % of the rows, score on the rest: mean cosine and nearest-word accuracy among all target rows."""
    order = torch.randperm(len(source), generator=torch.Generator().manual_seed(seed))
    held, fit = order[: len(order) // 10], order[len(order) // 10 :]
    mapped = source[held] @ torch.linalg.lstsq(source[fit], target[fit]).solution
    nearest = (F.normalize(mapped, dim=-1) @ F.normalize(target, dim=-1).T).argmax(dim=1)
    return {
        "held_out_words": len(held),
        "held_out_cosine": F.cosine_similarity(mapped, target[held]).mean().item(),
        "held_out_nearest_word_accuracy": (nearest == held).double().mean().item(),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/demo/vlap/final", help="a trained linear VLAP on SmolLM2")
    parser.add_argument("--images", type=int, default=64, help="validation images (the sweep's slice of train)")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.3, 0.1, 0.03])
    parser.add_argument("--out", default="outputs/prefix-transfer", help="where the training pool split is kept")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    vision, smollm2, gemma3 = str(efficientnet_lite0()), str(smollm2_135m()), str(gemma3_270m())
    _, validation = split_train(Path(args.out))
    rows = validation.select(range(args.images))
    states = vision_states(rows["image"], f"validation-{len(rows)}")

    def colour_shape(model, processor) -> tuple[float, list]:
        texts = caption(model, processor, vision_hidden_states=states, max_new_tokens=12, batch_size=32)
        right = [caption_is_right(text, c, s) for text, c, s in zip(texts, rows["colour"], rows["shape"])]
        return sum(right) / len(right), texts[:3]

    source, source_processor = load(args.model)
    target = VLAPForConditionalGeneration.from_vision_text_pretrained(vision, gemma3, num_visual_tokens=9).eval()
    target_processor = VLAPProcessor.from_vision_text_pretrained(vision, gemma3)
    if source.config.bridge_type != "linear" or source.config.num_visual_tokens != 9:
        raise SystemExit(f"{args.model}: expected make demo's linear VLAP bridge with 9 visual tokens")
    tokenizers = [AutoTokenizer.from_pretrained(path) for path in (smollm2, gemma3)]
    words, _, _ = english_vocabulary(tokenizers, 19_200)
    embeddings = []
    for model, tokenizer in zip((source, target), tokenizers):
        ids = string_to_id(tokenizer)
        with torch.no_grad():  # through the embedding module: Gemma scales its rows by sqrt(D)
            embeddings.append(model.language_model.get_input_embeddings()(torch.tensor([ids[w] for w in words])))
    source_words, target_words = (e.double() for e in embeddings)
    results = {"vocabulary_size": len(words), "word_map": word_map_quality(source_words, target_words)}

    with torch.no_grad():
        prefix = source.get_image_prefix(vision_hidden_states=states).double().flatten(0, 1)  # [N * 9, D]
    nearest = (F.normalize(prefix, dim=-1) @ F.normalize(source_words, dim=-1).T).max(dim=1).values
    results["prefix"] = {
        "norm_over_mean_word_norm": (prefix.norm(dim=-1).mean() / source_words.norm(dim=-1).mean()).item(),
        "cosine_to_nearest_word": nearest.mean().item(),
    }
    results["source_colour_shape"], examples = colour_shape(source, source_processor)
    print(f"word map: {results['word_map']}; prefix: {results['prefix']}")
    print(f"source on SmolLM2: {results['source_colour_shape']:.3f}, e.g. {examples}")
    word_map = torch.linalg.lstsq(source_words, target_words).solution  # [D_source, D_target]
    weight, bias = source.bridge.weight.detach().double(), source.bridge.bias.detach().double()
    results["mapped_colour_shape"] = {}
    for scale in args.scales:
        with torch.no_grad():
            target.bridge.weight.copy_(scale * word_map.T @ weight)
            target.bridge.bias.copy_(scale * bias @ word_map)
        results["mapped_colour_shape"][str(scale)], examples = colour_shape(target, target_processor)
        print(f"mapped to Gemma 3, x{scale}: {results['mapped_colour_shape'][str(scale)]:.3f}, e.g. {examples}")
    write_report(results, args.json)


if __name__ == "__main__":
    main()
