"""LangBridge: coefficients over a vocabulary subset; trained with train.py on one tiny LLM, moved to another LLM with
a different tokenizer by re-indexing strings, loaded back in a fresh process."""

import json

import pytest
import torch
from PIL import Image
from tiny import CORPUS, build, image_processor, images, langbridge, load_in_fresh_process, run_train, write_config
from transformers import AutoTokenizer

from modeling_vlap import VLAPForConditionalGeneration, VLAPProcessor
from vlap.cli import main
from vlap.data import caption_token_counts
from vlap.langbridge import english_vocabulary, select_vocabulary, string_to_id, token_strings, transfer


def test_token_strings_keep_the_leading_space_for_both_tokenizer_kinds(backbones):
    for llm, marker in (("llama", "Ġ"), ("t5", "▁")):
        tokenizer = AutoTokenizer.from_pretrained(backbones[llm])
        token_id = tokenizer.convert_tokens_to_ids(marker + "circle")
        assert token_strings(tokenizer)[token_id] == " circle", llm


@pytest.mark.parametrize("coefficients", ["softmax", "linear"])
def test_prefix_is_the_coefficient_mix_of_subset_embeddings(backbones, coefficients):
    model, processor = langbridge(backbones, coefficients=coefficients)
    pixel_values = processor(images=images(3))["pixel_values"]
    with torch.no_grad():
        tokens = model._visual_tokens(model.get_vision_hidden_states(pixel_values))
        weights = model.bridge.coefficients(tokens)
        prefix = model.get_image_prefix(pixel_values)
    subset = model.config.langbridge_token_ids
    assert weights.shape == (3, 4, len(subset)) and prefix.shape == (3, 4, model.word_embeddings.shape[1])
    assert torch.allclose(prefix, weights @ model.word_embeddings[subset], atol=1e-6)
    if coefficients == "softmax":
        assert (weights >= 0).all() and torch.allclose(weights.sum(-1), torch.ones(3, 4), atol=1e-6)
    else:
        assert not torch.allclose(weights.sum(-1), torch.ones(3, 4), atol=1e-2)
    assert model.num_parameters(only_trainable=True) == sum(p.numel() for p in model.bridge.parameters())


def test_subset_is_frequent_caption_tokens_shared_with_the_transfer_llm(backbones):
    model, _ = langbridge(backbones, size=1000, transfer_to=("t5",))
    t5_strings = string_to_id(AutoTokenizer.from_pretrained(backbones["t5"]))
    assert all(string in t5_strings for string in model.config.langbridge_tokens)
    assert " circle" in model.config.langbridge_tokens


def test_a_given_vocabulary_is_kept_in_order_and_checked(backbones):
    tokenizer = AutoTokenizer.from_pretrained(backbones["llama"])
    counts = caption_token_counts(CORPUS, VLAPProcessor(image_processor(), tokenizer), len(tokenizer))
    tokens, ids = select_vocabulary(counts, tokenizer, 10, given=[" plain", " circle"])
    assert tokens == [" plain", " circle"] and [token_strings(tokenizer)[i] for i in ids] == tokens
    with pytest.raises(ValueError, match="not single tokens"):
        select_vocabulary(counts, tokenizer, 10, given=[" circle", " zebra-crossing"])


@pytest.mark.slow
def test_transfer_reindexes_strings_and_keeps_adapter_weights(backbones, caption_folder, tmp_path):
    config = write_config(
        tmp_path / "cfg.yaml",
        backbones,
        caption_folder,
        tmp_path / "run",
        text_model=str(backbones["llama"]),
        model={"bridge_type": "langbridge"},
        langbridge_vocab_size=64,
        max_steps=3,
        langbridge_transfer_llms=str(backbones["t5"]),
    )
    run_train(config)
    source = tmp_path / "run" / "final"
    report = transfer(str(source), str(backbones["t5"]), tmp_path / "moved", min_coverage=1.0)
    assert report["coverage"] == 1.0

    before = VLAPForConditionalGeneration.from_pretrained(source)
    after = VLAPForConditionalGeneration.from_pretrained(tmp_path / "moved").eval()
    t5 = AutoTokenizer.from_pretrained(backbones["t5"])
    strings = token_strings(t5)
    assert after.config.langbridge_tokens == before.config.langbridge_tokens
    assert [strings[i] for i in after.config.langbridge_token_ids] == after.config.langbridge_tokens
    for key, value in before.bridge.state_dict().items():
        assert torch.equal(value, after.bridge.state_dict()[key]), key  # bitwise
    assert after.config.text_config.model_type == "t5" and before.config.text_config.model_type == "llama"

    image = tmp_path / "shape.png"
    images(1)[0].save(image)
    settings = {"max_new_tokens": 5, "min_new_tokens": 5, "do_sample": False}
    loaded, _ = load_in_fresh_process(tmp_path / "moved", image, settings)
    processor = VLAPProcessor.from_pretrained(tmp_path / "moved")
    expected = after.generate(**processor(images=[Image.open(image)]), **settings)
    assert loaded["ids"] == expected.tolist()

    # Fine-tuning the moved bridge on the new LLM starts from it: at learning rate 0 it ends exactly where it began.
    config = write_config(
        tmp_path / "tune.yaml",
        backbones,
        caption_folder,
        tmp_path / "tuned",
        text_model=str(backbones["t5"]),
        model={"bridge_type": "langbridge"},
        init_bridge=str(tmp_path / "moved"),
        max_steps=1,
        learning_rate=0.0,
    )
    run_train(config)
    tuned = VLAPForConditionalGeneration.from_pretrained(tmp_path / "tuned" / "final")
    assert tuned.config.langbridge_tokens == after.config.langbridge_tokens
    assert tuned.config.langbridge_token_ids == after.config.langbridge_token_ids
    for key, value in after.bridge.state_dict().items():
        assert torch.equal(value, tuned.bridge.state_dict()[key]), key
    config = write_config(
        tmp_path / "wrong.yaml",
        backbones,
        caption_folder,
        tmp_path / "wrong",
        model={"bridge_type": "linear"},
        init_bridge=str(tmp_path / "moved"),
        max_steps=1,
    )
    result = run_train(config, check=False)
    assert result.returncode != 0 and "its bridge does not fit this model" in result.stderr.splitlines()[-1]


def test_transfer_refuses_low_coverage_and_linear_bridges(backbones, tmp_path, capsys):
    model, processor = langbridge(backbones, size=1000)  # not restricted to strings the T5 tokenizer has
    model.save_pretrained(tmp_path / "lb")
    processor.save_pretrained(tmp_path / "lb")
    t5_strings = string_to_id(AutoTokenizer.from_pretrained(backbones["t5"]))
    shared = sum(s in t5_strings for s in model.config.langbridge_tokens) / len(model.config.langbridge_tokens)
    assert shared < 1
    with pytest.raises(ValueError, match="minimum coverage"):
        transfer(str(tmp_path / "lb"), str(backbones["t5"]), tmp_path / "refused", min_coverage=1.0)
    assert not (tmp_path / "refused").exists()
    report = transfer(str(tmp_path / "lb"), str(backbones["t5"]), tmp_path / "partial", min_coverage=0.0)
    moved = VLAPForConditionalGeneration.from_pretrained(tmp_path / "partial").eval()
    weights = moved.bridge.coefficients(torch.randn(2, 4, moved.config.vision_hidden_size))
    assert report["coverage"] == pytest.approx(shared)
    assert (weights[..., ~moved.bridge.present] == 0).all() and torch.allclose(weights.sum(-1), torch.ones(2, 4))

    linear, linear_processor = build(backbones, "llama")
    linear.save_pretrained(tmp_path / "linear")
    linear_processor.save_pretrained(tmp_path / "linear")
    capsys.readouterr()
    code = main(["transfer", str(tmp_path / "linear"), "--to-llm", str(backbones["t5"]), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "linear VLAP bridge" in err and "cannot be moved" in err


def test_words_per_token_reads_each_visual_tokens_coefficients(backbones, tmp_path, capsys):
    model, processor = langbridge(backbones, coefficients="linear")
    model.save_pretrained(tmp_path / "lb")
    processor.save_pretrained(tmp_path / "lb")
    images(1)[0].save(tmp_path / "image.png")
    capsys.readouterr()
    code = main(["words", str(tmp_path / "lb"), str(tmp_path / "image.png"), "--per-token", "--top-k", "3", "--json"])
    said = json.loads(capsys.readouterr().out)["visual_tokens"]
    pixels = processor(images=[str(tmp_path / "image.png")])["pixel_values"]
    tokens = torch.nn.functional.adaptive_avg_pool1d(model.get_vision_hidden_states(pixels).transpose(1, 2), 4)
    raw = model.bridge.to_words(model.bridge.mlp(tokens.transpose(1, 2)))[0]  # [K, N] by hand: no softmax in "linear"
    assert code == 0 and len(said) == 4
    for token, expected in zip(said, raw):
        top = expected.topk(3)
        assert [row["word"] for row in token] == [model.config.langbridge_tokens[i] for i in top.indices]
        assert [row["coefficient"] for row in token] == pytest.approx(top.values.tolist(), abs=1e-5)

    linear, linear_processor = build(backbones, "llama")
    linear.save_pretrained(tmp_path / "linear")
    linear_processor.save_pretrained(tmp_path / "linear")
    code = main(["words", str(tmp_path / "linear"), str(tmp_path / "image.png"), "--per-token"])
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the weight-loading progress bars
    assert code == 1 and last.startswith("vlap words: error: only a LangBridge model")


def hand_made_tokenizers(unigram_words=("the", "circle", "blue", "zebra", "qwxz")):
    """A byte-level BPE that has " the", " red", " circle", " zebra", " qwxz" as single tokens and a SentencePiece-style
    Unigram that has `unigram_words`: by default they share " the", " circle", " zebra" among English words (" qwxz"
    is not one), in that order of English frequency."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "a": 1} | {
        "Ġ" + word: 2 + i for i, word in enumerate(["the", "red", "circle", "zebra", "qwxz"])
    }
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    pieces = [("<pad>", 0.0), ("<unk>", 0.0), ("▁a", -1.0)] + [("▁" + word, -2.0) for word in unigram_words]
    unigram = Tokenizer(models.Unigram(pieces, unk_id=1))
    unigram.pre_tokenizer, unigram.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    return [
        PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>"),
        PreTrainedTokenizerFast(tokenizer_object=unigram, pad_token="<pad>", unk_token="<unk>"),
    ]


def test_english_vocabulary_is_the_shared_single_token_words_in_frequency_order():
    import wordfreq

    tokenizers = hand_made_tokenizers()
    words = list(wordfreq.iter_wordlist("en"))  # by frequency
    examined = words.index("circle") + 1  # "the" first, then on to "circle"
    report = {"vocabulary_size": 2, "words_examined": examined, "coverage": 2 / examined}
    ids = [tokenizers[0].convert_tokens_to_ids(token) for token in ("Ġthe", "Ġcircle")]  # the BPE's own ids
    assert english_vocabulary(tokenizers, 2) == ([" the", " circle"], ids, report)
    strings, _, report = english_vocabulary(tokenizers, 10)
    assert strings == [" the", " circle", " zebra"] and report["words_examined"] == len(words)  # all: fewer than 10
    with pytest.raises(ValueError, match="vocabulary is empty"):
        english_vocabulary(hand_made_tokenizers(unigram_words=["blue", "qwxz"]), 5)
