"""Cross-modal retrieval recall@K (image -> text and text -> image) as an `evaluate` module."""

import datasets
import evaluate
import torch

_DESCRIPTION = """\
Recall@K of cross-modal retrieval from an image-text similarity matrix, both directions. An image may own several
texts: image -> text counts a hit when any of its texts ranks within the top K; text -> image when its own image does.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): one row per image, its similarity to every text (all rows equally long).
    references (`list` of `list` of `int`): for each image, the indices of the texts that describe it; every text
        belongs to exactly one image.
    ks (`list` of `int`, optional): the K values, default (1, 5, 10).
    image_classes, text_classes (`list`, optional): a class label per image and per text. Given both, recall is
        relevance-aware (every text of an image's class is relevant to it, and every image of a text's class) and
        reported as image_to_text_class_R@K / text_to_image_class_R@K beside the instance-level figures.
Returns:
    image_to_text_R@K, text_to_image_R@K (`float`) for each K (and the class-level ones when classes are given).
Example:
    >>> metric = evaluate.load("vlap/metric_modules/retrieval_recall")
    >>> metric.compute(predictions=[[0.9, 0.1], [0.2, 0.8]], references=[[0], [1]], ks=[1])
    {'image_to_text_R@1': 1.0, 'text_to_image_R@1': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RetrievalRecall(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                }
            ),
        )

    def _compute(self, predictions, references, ks=(1, 5, 10), image_classes=None, text_classes=None):
        similarity = torch.tensor(predictions, dtype=torch.float32)
        owners = [-1] * similarity.shape[1]
        for image, texts in enumerate(references):
            for text in texts:
                if not 0 <= text < len(owners) or owners[text] != -1:
                    raise ValueError(f"text index {text} of image {image} is out of range or owned by two images")
                owners[text] = image
        if -1 in owners:
            raise ValueError(f"text {owners.index(-1)} belongs to no image: every text needs its image")
        results = retrieval_recall(similarity, owners, ks=tuple(ks))
        if image_classes is not None and text_classes is not None:
            results.update(class_retrieval_recall(similarity, image_classes, text_classes, ks=tuple(ks)))
        return results


def retrieval_recall(similarity: torch.Tensor, text_image: list[int], ks=(1, 5, 10)) -> dict:
    """R@K both ways from a `[num_images, num_texts]` similarity; `text_image[t]` is the image text t describes.

    Image -> text: an image is a hit when any of its captions ranks within K. Text -> image: its image within K.
    """
    text_image = torch.as_tensor(text_image)
    if similarity.shape[1] != len(text_image):
        raise ValueError(f"similarity has {similarity.shape[1]} texts but text_image has {len(text_image)}")
    results = {}
    ranked_texts = similarity.argsort(dim=1, descending=True)  # [I, T]
    owners = text_image[ranked_texts] == torch.arange(similarity.shape[0]).unsqueeze(1)
    first_hit = owners.float().argmax(dim=1)  # rank of the best-ranked own caption
    ranked_images = similarity.T.argsort(dim=1, descending=True)  # [T, I]
    image_rank = (ranked_images == text_image.unsqueeze(1)).float().argmax(dim=1)
    for k in ks:
        results[f"image_to_text_R@{k}"] = (first_hit < k).float().mean().item()
        results[f"text_to_image_R@{k}"] = (image_rank < k).float().mean().item()
    return results


def class_retrieval_recall(similarity: torch.Tensor, image_classes, text_classes, ks=(1, 5, 10)) -> dict:
    """Relevance-aware R@K from a `[num_images, num_texts]` similarity: every text of an image's class is relevant to
    it, and every image of a text's class. Use it where many images share one caption string (a perfect model would
    otherwise score about 1 / images-per-caption at R@1 with instance-level recall)."""
    index = {label: number for number, label in enumerate(dict.fromkeys([*image_classes, *text_classes]))}
    image_classes = torch.tensor([index[label] for label in image_classes])
    text_classes = torch.tensor([index[label] for label in text_classes])
    if similarity.shape != (len(image_classes), len(text_classes)):
        raise ValueError(
            f"similarity is {tuple(similarity.shape)} but there are {len(image_classes)} image and "
            f"{len(text_classes)} text classes"
        )
    relevant = image_classes.unsqueeze(1) == text_classes.unsqueeze(0)  # [I, T]
    text_rank = torch.gather(relevant, 1, similarity.argsort(dim=1, descending=True)).float().argmax(dim=1)
    image_rank = torch.gather(relevant.T, 1, similarity.T.argsort(dim=1, descending=True)).float().argmax(dim=1)
    results = {}
    for k in ks:
        results[f"image_to_text_class_R@{k}"] = (text_rank < k).float().mean().item()
        results[f"text_to_image_class_R@{k}"] = (image_rank < k).float().mean().item()
    return results
