"""Gradient checkpointing through the frozen LLM: the peak memory of a training step and its time, with and without.

The demo's models (EfficientNet-Lite0 + SmolLM2-135M, `make demo` caches them) with all 49 visual tokens (the 7 x 7
map) as the prefix, a batch of easy-vqa captions, forward + backward + AdamW. Peak memory: each setting runs in a
fresh process, and the step's peak is its high-water RSS over the RSS before the step (CPU has no allocator
counters). Time: both settings in one process, steps interleaved, medians.

    python -m bench.gradient_checkpointing [--batch-size 16] [--repeats 5] [--json out.json]
"""

import argparse
import resource
import subprocess
import sys

import torch

from bench.common import device_name, interleaved_medians, real_batch, real_models_cached, write_report
from bench.train_step import step_fn

VISUAL_TOKENS = 49


def demo_model(checkpointing: bool):
    from experiments.assets import efficientnet_lite0, smollm2_135m
    from modeling_vlap import VLAPForConditionalGeneration

    torch.manual_seed(0)
    model = VLAPForConditionalGeneration.from_vision_text_pretrained(
        str(efficientnet_lite0()), str(smollm2_135m()), num_visual_tokens=VISUAL_TOKENS
    ).train()
    if checkpointing:
        model.activation_checkpointing_enable()
    return model


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def step_peak_mb(checkpointing: bool, batch_size: int) -> float:
    """Run in a fresh process: the step's peak RSS over the RSS before it, in MiB."""
    model = demo_model(checkpointing)
    step = step_fn(model, real_batch(model, batch_size))
    before = rss_mb()
    step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json")
    parser.add_argument("--peak-of", choices=["on", "off"], help=argparse.SUPPRESS)  # the fresh-process measurement
    args = parser.parse_args()
    if args.peak_of:
        print(step_peak_mb(args.peak_of == "on", args.batch_size))
        return
    if not real_models_cached():
        raise SystemExit("the demo's models are not cached yet: run `make demo` once")

    peaks = {}
    for setting in ("off", "on"):
        command = [sys.executable, "-m", "bench.gradient_checkpointing", "--peak-of", setting]
        output = subprocess.run([*command, "--batch-size", str(args.batch_size)], check=True, capture_output=True)
        peaks[setting] = float(output.stdout.decode().split()[-1])
    models = {setting: demo_model(setting == "on") for setting in ("off", "on")}
    inputs = real_batch(models["off"], args.batch_size)
    times = interleaved_medians({s: step_fn(model, inputs) for s, model in models.items()}, args.repeats)
    results = {
        "device": device_name(),
        "batch_size": args.batch_size,
        "visual_tokens": VISUAL_TOKENS,
        "step_peak_mb": peaks,
        "step_seconds": times,
        "peak_on_over_off": peaks["on"] / peaks["off"],
        "time_on_over_off": times["on"] / times["off"],
    }
    print(
        f"batch {args.batch_size}, {VISUAL_TOKENS} visual tokens: step peak {peaks['off']:.0f} MiB -> "
        f"{peaks['on']:.0f} MiB with checkpointing ({results['peak_on_over_off']:.2f}x); step time "
        f"{times['off']:.2f}s -> {times['on']:.2f}s ({results['time_on_over_off']:.2f}x)"
    )
    write_report(results, args.json)


if __name__ == "__main__":
    main()
