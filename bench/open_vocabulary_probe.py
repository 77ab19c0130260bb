"""What the frozen vision features allow on the open vocabulary, without any bridge or LLM: the bound a bridge on
EfficientNet-Lite0 works under.

Each image is EfficientNet-Lite0's 7x7x1280 map averaged into one L2-normalised vector. A validation (or test)
drawing is given the concept whose mean training feature is nearest (cosine), among every concept the training
split has; top-1 and top-5 accuracy over the drawings, and the share of drawings whose concept the training split
has at all (the most any method that learns concepts from training drawings alone can name). Also the same for the
Tux Paint photos, among the photos' concepts that the drawings' training split has.

    python -m bench.open_vocabulary_probe [--split validation] [--json F]
"""

import argparse
import sys

import datasets
import torch
import torch.nn.functional as F

from bench.common import write_report
from experiments.assets import cache_root, vision_states
from experiments.open_vocabulary import open_vocabulary_dataset


def pooled(rows, name: str) -> torch.Tensor:
    """`[N, 1280]` unit vectors: the mean of EfficientNet-Lite0's feature map of each image."""
    states = vision_states(rows["image"], f"open-vocabulary-{name}")
    return F.normalize(states.float().mean(dim=(2, 3)), dim=-1)


def nearest_mean(train, train_features, rows, features) -> dict:
    """Top-1 / top-5 of the nearest training concept mean, and how many rows' concepts training has."""
    concepts = sorted(set(train["concept"]))
    index = {concept: k for k, concept in enumerate(concepts)}
    labels = torch.tensor([index[c] for c in train["concept"]])
    means = F.normalize(
        torch.zeros(len(concepts), train_features.shape[1]).index_add_(0, labels, train_features), dim=-1
    )
    ranked = (features @ means.T).topk(5, dim=1).indices
    truth = [index.get(c, -1) for c in rows["concept"]]
    return {
        "images": len(truth),
        "concepts_among": len(concepts),
        "top1": sum(int(r[0]) == t for r, t in zip(ranked, truth)) / len(truth),
        "top5": sum(t in r.tolist() for r, t in zip(ranked, truth)) / len(truth),
        "concept_seen_in_training": sum(t >= 0 for t in truth) / len(truth),
        "chance_top1": 1 / len(concepts),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=["validation", "test"], default="validation")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    splits = datasets.load_from_disk(str(open_vocabulary_dataset(cache_root())))
    train = splits["train"]
    train_features = pooled(train, "train")
    results = {
        name: nearest_mean(train, train_features, splits[name], pooled(splits[name], name))
        for name in (args.split, "photos")
    }
    command = "python -m bench.open_vocabulary_probe " + " ".join(argv if argv is not None else sys.argv[1:])
    write_report({"command": command.strip(), **results}, args.json)


if __name__ == "__main__":
    main()
