"""Frozen-feature cache: run the frozen vision model once per image, train from its stored outputs.

Layout: `<root>/<key>/` holds safetensors shards `rank{r}-{k}.safetensors` ("features" `[n, ...]`, "indices" `[n]`),
one `rank{r}.json` per process (its shards and unreadable rows), and `complete.json`, written last by the main
process: a folder without it is ignored and rebuilt. The key hashes the vision config, the image processor and the
dataset fingerprint and the vision weights themselves, so any change to what produces the features selects a
different folder.
"""

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

SHARD_ROWS = 1024


def cache_key(model, processor, dataset_fingerprint: str, num_rows: int) -> str:
    weights = hashlib.sha256()
    for name, tensor in sorted(model.vision_model.state_dict().items()):
        weights.update(name.encode())
        weights.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    description = {
        "vision_weights": weights.hexdigest(),
        "vision_config": model.config.vision_config.to_dict(),
        "image_processor": processor.image_processor.to_dict(),
        "dataset": dataset_fingerprint,
        "num_rows": num_rows,
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:20]


class FeatureCache:
    """Read side: `cache[i]` -> the frozen vision output of row i, or None when its image was unreadable."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        manifest = json.loads((self.directory / "complete.json").read_text())
        self.location, self.bad = {}, set()
        for part in manifest["parts"]:
            record = json.loads((self.directory / part).read_text())
            self.bad.update(record["bad"])
            for shard in record["shards"]:
                with safe_open(self.directory / shard, framework="pt") as handle:
                    for position, index in enumerate(handle.get_tensor("indices").tolist()):
                        self.location[index] = (shard, position)
        self._handles = {}

    def __len__(self) -> int:
        return len(self.location) + len(self.bad)

    def __getitem__(self, index: int) -> torch.Tensor | None:
        if index in self.bad:
            return None
        shard, position = self.location[index]
        if shard not in self._handles:
            self._handles[shard] = safe_open(self.directory / shard, framework="pt")
        return self._handles[shard].get_slice("features")[position]


@torch.no_grad()
def build_feature_cache(model, processor, images, root, accelerator, batch_size: int = 32) -> FeatureCache:
    """Compute (or reuse) the cache for `images` (a CaptionedImages). Each process encodes rows rank::world."""
    directory = Path(root) / cache_key(model, processor, images.dataset._fingerprint, len(images))
    if (directory / "complete.json").exists():
        return FeatureCache(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rank, world = accelerator.process_index, accelerator.num_processes
    rows = list(range(rank, len(images), world))
    shards, bad = [], []
    device = accelerator.device
    for shard_number, start in enumerate(range(0, len(rows), SHARD_ROWS)):
        features, indices = [], []
        chunk = rows[start : start + SHARD_ROWS]
        progress = tqdm(
            range(0, len(chunk), batch_size),
            desc="caching vision features",
            disable=not accelerator.is_local_main_process,
        )
        for offset in progress:
            batch_rows = chunk[offset : offset + batch_size]
            decoded = [(index, images.image(index)) for index in batch_rows]
            bad += [index for index, image in decoded if image is None]
            good = [(index, image) for index, image in decoded if image is not None]
            if not good:
                continue
            pixels = processor(images=[image for _, image in good])["pixel_values"].to(device, model.dtype)
            features.append(model.get_vision_hidden_states(pixels).cpu())
            indices += [index for index, _ in good]
        if indices:
            name = f"rank{rank}-{shard_number}.safetensors"
            save_file(
                {"features": torch.cat(features).contiguous(), "indices": torch.tensor(indices)}, directory / name
            )
            shards.append(name)
    (directory / f"rank{rank}.json").write_text(json.dumps({"shards": shards, "bad": bad}))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        parts = [f"rank{r}.json" for r in range(world)]
        (directory / "complete.json").write_text(json.dumps({"parts": parts, "num_rows": len(images)}))
    accelerator.wait_for_everyone()
    return FeatureCache(directory)
