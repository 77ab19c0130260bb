"""Training-step overhead of VLAP (caption + assignment) over caption-only, with its breakdown, and the memory story.

Same models, same batch, steps timed interleaved: forward + backward + AdamW step. The difference is broken down
into its parts timed alone: the caption's text code and target (paper: a frozen LLM forward; the demo's method:
embedding rows), the image target's Sinkhorn, and the image code + swapped-prediction loss (forward and backward),
for the paper's text code and for the one `make demo` ships. Memory: trainable parameters and AdamW
state of the bridge against the frozen total, for the bench models and for the paper's backbones (from configs).
With --real the step is `make demo`'s training step: the demo's models, cached vision output, easy-vqa captions.

    python -m bench.train_step [--batch-size 32] [--repeats 5] [--json out.json]
"""

import argparse

import torch
from transformers import AutoConfig, CLIPVisionConfig, T5Config

from bench.common import (
    REAL,
    batch,
    bench_kinds,
    device_name,
    interleaved_medians,
    real_batch,
    vlap_model,
    write_report,
)
from experiments.runs import VARIANTS, VLAP_METHOD
from modeling_vlap import VLAPConfig, VLAPForConditionalGeneration


def step_fn(model, inputs, bf16: bool = False):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        optimizer.zero_grad()
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()

    return step


def breakdown(model, inputs, repeats):
    prefix = model.get_image_prefix(inputs.get("pixel_values"), inputs.get("vision_hidden_states"))
    prefix = prefix.detach().requires_grad_()
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    l_map, vocabulary = model.assignment_prediction, model.vocabulary()
    paper = model.config.text_representation == "hidden_states"  # its text code needs the LLM's forward

    @torch.no_grad()
    def text_code_and_target():
        features = model.get_text_features(ids, mask) if paper else None
        codes, token_codes = l_map.caption_codes(ids, mask, vocabulary, features)
        return codes, l_map.caption_assignments(ids, mask, vocabulary, codes, token_codes)

    text_codes, text_targets = text_code_and_target()
    image_codes = l_map.word_codes(prefix.float().mean(dim=1), vocabulary)

    def image_target():
        l_map.assignments(image_codes.detach())

    def image_code_and_loss():
        codes = l_map.word_codes(prefix.float().mean(dim=1), vocabulary)
        l_map.swapped_prediction(codes, text_codes, text_targets).loss.backward()

    return interleaved_medians(
        {
            "text_code_and_target": text_code_and_target,
            "image_target": image_target,
            "image_code_and_loss": image_code_and_loss,
        },
        repeats,
    )


def memory(model) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {
        "trainable_parameters": trainable,
        "frozen_parameters": total - trainable,
        "trainable_fraction": trainable / total,
        "adamw_state_bytes": 2 * trainable * 4,
        "bridge_plus_state_bytes": 3 * trainable * 4,
        "frozen_bytes_fp32": (total - trainable) * 4,
    }


def paper_scale_memory() -> dict:
    """CLIP ViT-B/32 + T5-base and + OPT-1.3b, built on the meta device from their published configs."""
    clip_b32 = CLIPVisionConfig(
        hidden_size=768,
        intermediate_size=3072,
        num_attention_heads=12,
        num_hidden_layers=12,
        image_size=224,
        patch_size=32,
    )
    llms = {
        "t5-base": T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12),
        "opt-1.3b": AutoConfig.for_model(
            "opt",
            vocab_size=50272,
            hidden_size=2048,
            ffn_dim=8192,
            num_hidden_layers=24,
            num_attention_heads=32,
            word_embed_proj_dim=2048,
        ),
    }
    results = {}
    for name, llm in llms.items():
        with torch.device("meta"):
            model = VLAPForConditionalGeneration(
                VLAPConfig(vision_config=clip_b32.to_dict(), text_config=llm.to_dict())
            )
        results[f"clip-vit-b32+{name}"] = memory(model)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json")
    parser.add_argument("--real", action="store_true", help="also the demo's cached EfficientNet-Lite0 + SmolLM2")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast, as make demo trains (DEMO_BUDGET)")
    args = parser.parse_args()
    results = {"device": device_name(), "batch_size": args.batch_size, "bf16": args.bf16}
    methods = {"paper": VARIANTS["paper"], "demo": VLAP_METHOD}  # the paper's text code (LLM states), make demo's
    for kind, (method, overrides) in ((k, m) for k in bench_kinds(args.real) for m in methods.items()):
        vlap = vlap_model(kind, **overrides).train()
        caption_only = vlap_model(kind, assignment_loss_weight=0.0).train()
        inputs = (
            real_batch(vlap, args.batch_size) if kind == REAL else batch(args.batch_size, vocab=vlap.word_prior.numel())
        )
        times = interleaved_medians(
            {"vlap": step_fn(vlap, inputs, args.bf16), "caption_only": step_fn(caption_only, inputs, args.bf16)},
            args.repeats,
        )
        parts = breakdown(vlap, inputs, args.repeats)
        ratio = times["vlap"] / times["caption_only"]
        results[f"{kind}/{method}"] = {
            "seconds": times,
            "vlap_over_caption_only": ratio,
            "breakdown_seconds": parts,
            "memory": memory(vlap),
        }
        print(
            f"{kind}, {method} text code: VLAP step / caption-only step = {ratio:.3f} (goal <= 1.10); extra "
            f"{times['vlap'] - times['caption_only']:.3f}s of {times['caption_only']:.3f}s; parts timed alone: "
            + ", ".join(f"{k} {v:.3f}s" for k, v in parts.items())
            + f"; bridge {memory(vlap)['trainable_fraction']:.4%} of parameters"
        )
    results["paper_scale"] = paper_scale_memory()
    for name, row in results["paper_scale"].items():
        print(
            f"{name}: bridge {row['trainable_parameters']:,} parameters ({row['trainable_fraction']:.3%}); bridge + "
            f"AdamW state {row['bridge_plus_state_bytes'] / 2**20:.1f} MiB "
            f"vs frozen {row['frozen_bytes_fp32'] / 2**30:.2f} GiB"
        )
    write_report(results, args.json)


if __name__ == "__main__":
    main()
