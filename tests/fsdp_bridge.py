"""The bridge trained with the frozen LLM sharded by torch's FSDP2 (`fully_shard` on each decoder layer, then on the
whole model: the layout accelerate's FSDP2 plugin applies with its transformer wrap policy), on CPU over gloo.

    python tests/fsdp_bridge.py BACKBONES OUT                          # one process, no sharding: the reference
    torchrun --nproc_per_node 2 tests/fsdp_bridge.py BACKBONES OUT     # each process half of the same global batch

accelerate refuses FSDP without a GPU (train.py says so), so this drives the model as accelerate would: AdamW on the
bridge, gradients averaged over processes by FSDP's reduce-scatter. Writes OUT/losses.json (one per step) and
OUT/final, a bridge-only export of the full (gathered) bridge.
"""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from tiny import build, shape_image
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from modeling_vlap.modeling_vlap import is_bridge_key

# Every process gets the same caption lengths (6, 8, 6, 8 tokens with the tiny tokenizer): the caption loss is a token
# mean per process, averaged over processes, which then equals the one-process token mean.
COLOURS, SHAPES = ["green", "orange", "gray", "pink"], ["circle", "square"]
STEPS = 3


def main(backbones_root: Path, out: Path) -> None:
    backbones = {name: backbones_root / name for name in ("clip", "opt")}
    sharded = "WORLD_SIZE" in os.environ
    rank, world = 0, 1
    if sharded:
        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    model, processor = build(backbones, "opt")
    if sharded:
        mesh = init_device_mesh("cpu", (world,))
        layer_classes = tuple(model.language_model._no_split_modules)
        for module in model.language_model.modules():
            if type(module).__name__ in layer_classes:
                fully_shard(module, mesh=mesh)
        fully_shard(model, mesh=mesh)
    model.train()

    pairs = [(colour, shape) for colour in COLOURS for shape in SHAPES]  # the global batch: 8 images
    mine = pairs[rank * len(pairs) // world : (rank + 1) * len(pairs) // world]
    batch = processor(images=[shape_image(c, s) for c, s in mine], text=[f"a {c} {s}" for c, s in mine])
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    losses = []
    for _ in range(STEPS):
        out_step = model(**batch)
        out_step.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        parts = torch.stack([out_step.loss.detach(), out_step.assignment_loss.detach()])
        if sharded:
            dist.all_reduce(parts)
            parts /= world
        losses.append(dict(zip(("loss", "assignment_loss"), parts.tolist())))

    # The gathered (full) weights on every process; rank 0 keeps the bridge and writes it as a bridge-only folder.
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        sharded_names = sorted(name for name, p in model.named_parameters() if type(p).__name__ == "DTensor")
        exported, _ = build(backbones, "opt")
        exported.load_state_dict({k: v for k, v in state.items() if is_bridge_key(k)}, strict=False)
        exported.save_pretrained(out / "final", bridge_only=True)
        processor.save_pretrained(out / "final")
        (out / "losses.json").write_text(json.dumps({"losses": losses, "sharded_parameters": sharded_names}))
    if sharded:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
