"""Cross-modal retrieval recall@K (image -> text and text -> image) as an `evaluate` module."""

import datasets
import evaluate
import torch

from vlap.metrics import class_retrieval_recall, retrieval_recall

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
