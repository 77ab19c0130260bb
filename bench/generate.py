"""Generation overhead: captions/s of VLAP generate against the bare LLM's generate on the same number of prefix
embeddings and the same new-token budget (greedy; every caption forced to the full budget so both decode alike).

VLAP's extra work is the frozen vision forward and the bridge, once per caption, before decoding.

    python -m bench.generate [--new-tokens 20] [--repeats 5] [--json out.json]
"""

import argparse

import torch

from bench.common import batch, bench_kinds, device_name, interleaved_medians, vlap_model, write_report


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json")
    parser.add_argument("--real", action="store_true", help="also the demo's cached EfficientNet-Lite0 + SmolLM2")
    args = parser.parse_args()
    settings = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
    results = {"device": device_name(), "new_tokens": args.new_tokens}
    for kind in bench_kinds(args.real):
        model = vlap_model(kind)
        for size in (1, 16):
            inputs = batch(size, vocab=model.word_prior.numel())
            del inputs["input_ids"], inputs["attention_mask"]
            with torch.no_grad():
                prefix = model.get_image_prefix(inputs["pixel_values"])
                embeds, mask = model.prefix_and_prompt_embeds(
                    prefix, inputs["prompt_input_ids"], inputs["prompt_attention_mask"]
                )

            def vlap():
                model.generate(**inputs, **settings)

            def bare():
                with torch.no_grad():
                    model.language_model.generate(
                        inputs_embeds=embeds, attention_mask=mask, generation_config=model.generation_config, **settings
                    )

            def vision_and_bridge():
                with torch.no_grad():
                    model.get_image_prefix(inputs["pixel_values"])

            times = interleaved_medians(
                {"vlap": vlap, "bare_llm": bare, "vision_and_bridge": vision_and_bridge}, args.repeats
            )
            ratio = times["bare_llm"] / times["vlap"]  # captions/s of VLAP over captions/s of the bare LLM
            bound = times["bare_llm"] / (times["bare_llm"] + times["vision_and_bridge"])
            results[f"{kind}_batch{size}"] = {
                "seconds": times,
                "vlap_over_bare_captions_per_s": ratio,
                "bound_from_vision_and_bridge": bound,
            }
            print(
                f"{kind} batch {size}: VLAP / bare LLM captions per second = {ratio:.3f} (goal >= 0.95; the vision "
                f"forward + bridge alone bound it at {bound:.3f}); {size / times['vlap']:.1f} vs "
                f"{size / times['bare_llm']:.1f} captions/s"
            )
    write_report(results, args.json)


if __name__ == "__main__":
    main()
