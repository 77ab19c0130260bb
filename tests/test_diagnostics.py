"""The assignment-target diagnostics on hand-built cases."""

import math

import torch

from vlap.diagnostics import assignment_diagnostics, content_word_mask, entropy_ratio


def test_entropy_ratio_is_zero_for_one_word_and_one_for_uniform():
    vocab = 50
    one_hot = torch.zeros(3, vocab)
    one_hot[:, 7] = 1.0
    assert entropy_ratio(one_hot) < 1e-6
    assert math.isclose(entropy_ratio(torch.full((3, vocab), 1.0 / vocab)), 1.0, rel_tol=1e-6)
    half = torch.zeros(1, vocab)
    half[0, :2] = 0.5
    assert math.isclose(entropy_ratio(half), math.log(2) / math.log(vocab), rel_tol=1e-6)


def test_content_mass_and_agreement_on_a_one_hot_cost():
    vocab = 6  # words: 0 "a", 1 "red", 2 "circle", 3 "blue", 4 "is", 5 special
    content = torch.tensor([False, True, True, True, False, False])
    captions = torch.tensor([[0, 1, 2, 5], [0, 3, 4, 5]])  # "a red circle", "a blue is"
    text_codes = torch.full((2, vocab), -1.0)
    text_codes[0, 1] = text_codes[1, 4] = 1.0  # caption 0 -> "red" (content), caption 1 -> "is" (function word)
    image_codes = torch.zeros(2, vocab)  # constant: a uniform target
    image_codes[0, 1] = 1.0
    row_softmax = lambda codes: torch.softmax(codes / 0.01, dim=-1)  # what marginal_weight=0 gives  # noqa: E731
    result = assignment_diagnostics(row_softmax(image_codes), row_softmax(text_codes), captions, content)
    assert result["text_target_entropy"] < 1e-6
    assert math.isclose(result["text_target_content_mass"], 0.5, abs_tol=1e-6)  # one of two on a content word
    assert math.isclose(result["image_target_entropy"], 0.5, abs_tol=1e-6)  # row 0 one word, row 1 uniform
    assert math.isclose(result["image_target_content_mass"], (1 + 1 / 6) / 2, abs_tol=1e-6)  # "blue" of 6 words
    assert result["top1_agreement"] == 0.5


def test_content_words_leave_out_function_words_and_specials(backbones):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(backbones["llama"])
    mask = content_word_mask(tokenizer, len(tokenizer))
    for word, expected in ((" circle", True), (" plain", True), (" a", False), (" on", False)):
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and bool(mask[ids[0]]) is expected, word
    assert not mask[tokenizer.eos_token_id]
