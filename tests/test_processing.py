import numpy as np
import pytest
from PIL import Image

from modeling_vlap import VLAPProcessor


@pytest.fixture(scope="module")
def processor(backbones):
    return VLAPProcessor.from_vision_text_pretrained(str(backbones["clip"]), str(backbones["llama"]))


def test_every_pil_mode_becomes_rgb(processor):
    rgb = Image.new("RGB", (20, 30), (10, 200, 30))
    converted = [
        rgb,
        rgb.convert("L"),
        rgb.convert("P"),
        rgb.convert("CMYK"),
        Image.new("RGBA", (20, 30), (10, 200, 30, 255)),
        Image.new("LA", (20, 30), (90, 0)),  # fully transparent: composited onto white
    ]
    pixels = processor(images=converted)["pixel_values"]
    assert pixels.shape == (6, 3, 32, 32)
    np.testing.assert_allclose(pixels[4], pixels[0], atol=1e-6)  # opaque RGBA == RGB
    white = processor(images=[Image.new("RGB", (20, 30), (255, 255, 255))])["pixel_values"][0]
    np.testing.assert_allclose(pixels[5], white, atol=1e-6)
    gray = pixels[1]
    np.testing.assert_allclose(gray[0] * 0.26862954 + 0.48145466, gray[1] * 0.26130258 + 0.4578275, atol=1e-5)


def test_paths_and_arrays(processor, tmp_path):
    path = tmp_path / "shape.png"
    Image.new("RGB", (16, 16), (0, 0, 255)).save(path)
    array = np.zeros((16, 16, 3), dtype=np.uint8)
    array[..., 2] = 255
    pixels = processor(images=[str(path), path, array])["pixel_values"]
    np.testing.assert_allclose(pixels[0], pixels[2], atol=1e-6)
    np.testing.assert_allclose(pixels[1], pixels[2], atol=1e-6)


def test_bad_images_name_the_item(processor, tmp_path):
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")
    good = Image.new("RGB", (8, 8))
    with pytest.raises(ValueError, match=r"images\[1\] \(.*notes.txt'\): not a readable image"):
        processor(images=[good, not_an_image])
    with pytest.raises(ValueError, match=r"images\[0\] \(.*missing.png'\): not a readable image"):
        processor(images=[tmp_path / "missing.png"])
    with pytest.raises(ValueError, match=r"images\[2\] is a int"):
        processor(images=[good, good, 3])
    with pytest.raises(ValueError, match="images is an empty list"):
        processor(images=[])


def test_captions_continue_the_prompt_end_with_eos_and_have_no_bos(processor):
    captions = ["a red circle", "a blue square on a plain background"]
    batch = processor(text=captions)
    tokenizer = processor.tokenizer
    prompt_ids = tokenizer(processor.prompt, add_special_tokens=False)["input_ids"]
    for ids, mask, caption in zip(batch["input_ids"], batch["attention_mask"], captions):
        real = ids[mask.bool()].tolist()
        # [prompt; caption] is exactly how the tokenizer spells the whole sentence: the caption's first word is the
        # mid-sentence token (" a"), not the start-of-text one ("a") that separate tokenisation would give.
        whole = tokenizer(f"{processor.prompt} {caption}", add_special_tokens=False)["input_ids"]
        assert prompt_ids + real == whole + [tokenizer.eos_token_id]
        assert tokenizer.decode(real[:1]) == " a"
    assert batch["attention_mask"][0, -1] == 0  # right padding


def test_bad_captions_and_prompts(processor):
    image = Image.new("RGB", (8, 8))
    with pytest.raises(ValueError, match="text is an empty list"):
        processor(text=[])
    with pytest.raises(ValueError, match=r"text\[1\] is ''"):
        processor(text=["a star", ""])
    with pytest.raises(ValueError, match="2 images but 1 captions"):
        processor(images=[image, image], text=["a star"])
    with pytest.raises(ValueError, match="2 images but 3 prompts"):
        processor(images=[image, image], prompt=["a", "b", "c"])
    with pytest.raises(ValueError, match="pass images with it"):
        processor(text=["a star"], prompt="Question:")


def test_prompts_default_and_per_image(processor):
    image = Image.new("RGB", (8, 8))
    default = processor(images=[image, image])
    expected = processor.tokenizer("A picture of", add_special_tokens=False)["input_ids"]
    assert default["prompt_input_ids"][0].tolist() == expected
    mixed = processor(images=[image, image], prompt=["Question: is there a circle? Answer:", ""])
    assert mixed["prompt_attention_mask"][1].sum() == 0


def test_word_prior_counts_the_truncated_tokens_training_sees(processor):
    import torch

    from vlap.data import caption_token_counts

    captions = ["a red circle", " ".join(["blue"] * 500) + " square", "a green triangle on a white background"]
    vocab = len(processor.tokenizer)
    batch = processor(text=captions, max_length=6)  # what the collator feeds training
    expected = torch.bincount(batch["input_ids"][batch["attention_mask"].bool()], minlength=vocab).double()
    torch.testing.assert_close(caption_token_counts(captions, processor, vocab, max_length=6), expected)
    untruncated = caption_token_counts(captions, processor, vocab)
    blue = processor.tokenizer(" blue", add_special_tokens=False)["input_ids"][0]
    assert untruncated[blue] >= 500 > expected[blue]  # the long caption would have swamped the prior
