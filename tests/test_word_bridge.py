"""The word bridge: an image's words chosen by hand-checkable rules, the exact text the LLM reads, the bag-of-words
loss, moving to another LLM by re-tokenising strings, and a moved folder in a fresh process."""

import subprocess
import sys
import textwrap

import pytest
import torch
from tiny import NO_REPO_IMPORTS, build, language_model, load_in_fresh_process, run_train, shape_image, write_config
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from modeling_vlap import VLAPConfig, VLAPForConditionalGeneration
from modeling_vlap.processing_vlap import word_bridge_ids
from vlap.langbridge import caption_words, transfer

WORDS = ["red", "circle", "blue", "square", "green", "triangle", "yellow", "background"]
LAYOUT = "Words: red, star.\nCaption: a red star.\nWords:{words}.\n"
SETTINGS = {
    "bridge_type": "words",
    "word_bridge_words": WORDS,
    "word_bridge_layout": LAYOUT,
    "assignment_loss_weight": 0.0,
    "prompt": "Caption:",
}


@pytest.fixture(scope="module")
def word_bridge(backbones):
    model, processor = build(backbones, "llama", **SETTINGS)
    processor.prompt = "Caption:"
    with torch.no_grad():  # spread the probabilities so that the threshold and top-k both matter
        model.bridge.to_words.weight.normal_(0, 2.0)
    return model.eval(), processor


@pytest.fixture(scope="module")
def other_llm(tmp_path_factory):
    """A second LLM whose byte-level BPE differs from the tiny backbones' (other merges, other ids)."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=280, special_tokens=["<unk>", "</s>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(["blue square triangle yellow green background words caption"] * 3, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", pad_token="<pad>")
    torch.manual_seed(1)
    llm = language_model("llama", tokenizer)
    folder = tmp_path_factory.mktemp("other-llm")
    llm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def pictures():
    return [shape_image(c, s) for c, s in (("red", "circle"), ("blue", "square"), ("green", "triangle"))]


def written_out(words: list[str], layout: str, prompt: str) -> str:
    """The text a word bridge shows the LLM, written independently of the model's id composition."""
    return layout.replace("{words}", ",".join(" " + word for word in words)) + prompt


def test_the_words_are_the_top_k_of_the_word_probabilities_above_the_threshold(word_bridge):
    model, processor = word_bridge
    pixel_values = processor(images=pictures())["pixel_values"]
    with torch.no_grad():
        tokens = model.vision_model(pixel_values=pixel_values).last_hidden_state  # CLIP: CLS + patches
        weight, bias = model.bridge.to_words.weight, model.bridge.to_words.bias
        probabilities = torch.sigmoid(tokens.mean(dim=1) @ weight.T + bias)
    for top_k, threshold in ((5, 0.5), (3, 0.2), (8, 0.0), (5, 1.0)):
        model.bridge.top_k, model.bridge.threshold = top_k, threshold
        expected = []
        for row in probabilities.tolist():
            order = sorted(range(len(WORDS)), key=lambda i: -row[i])[:top_k]
            kept = [i for rank, i in enumerate(order) if rank == 0 or row[i] >= threshold]
            expected.append([WORDS[i] for i in kept])
        assert model.get_image_words(pixel_values) == expected
        assert all(words for words in expected)  # at least the most probable word, even above every probability
    model.bridge.top_k, model.bridge.threshold = model.config.word_bridge_top_k, model.config.word_bridge_threshold
    weights, indices = model.image_to_words(pixel_values, top_k=3)  # the read-out: probabilities, unthresholded
    assert torch.allclose(weights, probabilities.topk(3).values, atol=1e-6)
    assert indices.tolist() == probabilities.topk(3).indices.tolist()


def test_the_llm_reads_exactly_the_written_out_layout(word_bridge):
    model, processor = word_bridge
    inputs = processor(images=pictures())
    ids = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    for row, words in enumerate(model.get_image_words(inputs["pixel_values"])):
        text = processor.tokenizer(written_out(words, LAYOUT, "Caption:"), return_tensors="pt")["input_ids"]
        expected = model.language_model.generate(
            input_ids=text, max_new_tokens=6, do_sample=False, generation_config=model.generation_config
        )[:, text.shape[1] :]
        assert ids[row, : expected.shape[1]].tolist() == expected[0].tolist()
    # The layout's ids do not depend on the words (the bench and `vlap transfer` tokenise it alone).
    assert word_bridge_ids(processor.tokenizer, [], LAYOUT)["word_bridge_layout_ids"] == (
        model.config.word_bridge_layout_ids
    )
    # A question after the words (VQA through the words): the same rule with the question as the prompt.
    question = "Question: what colour is the shape? Answer:"
    asked = model.generate(**processor(images=pictures()[:1], prompt=question), max_new_tokens=4, do_sample=False)
    words = model.get_image_words(inputs["pixel_values"][:1])[0]
    text = processor.tokenizer(written_out(words, LAYOUT, question), return_tensors="pt")["input_ids"]
    expected = model.language_model.generate(
        input_ids=text, max_new_tokens=4, do_sample=False, generation_config=model.generation_config
    )[:, text.shape[1] :]
    assert asked[0, : expected.shape[1]].tolist() == expected[0].tolist()


def test_generation_stops_at_the_end_of_the_caption_line(word_bridge):
    model, processor = word_bridge
    eos = model.generation_config.eos_token_id
    newline_tokens = [i for i in range(len(processor.tokenizer)) if "\n" in processor.tokenizer.decode([i])]
    assert newline_tokens and set(newline_tokens) <= set(eos)
    assert processor.tokenizer.eos_token_id in eos


def test_the_bag_of_words_loss_against_an_independent_computation(word_bridge):
    model, processor = word_bridge
    captions = ["a red circle on a plain background", "a blue square", "a green triangle that is red"]
    batch = processor(images=pictures(), text=captions)
    targets = torch.tensor([[float(word in caption.split()) for word in WORDS] for caption in captions])
    assert torch.equal(model.bridge.targets(batch["input_ids"], batch["attention_mask"]), targets)
    out = model(**batch)
    logits = out.word_logits.detach()
    p = torch.sigmoid(logits.double())
    by_hand = -(targets * p.log() + (1 - targets) * (1 - p).log()).sum() / len(captions)
    assert out.loss.item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_training_lowers_the_loss_and_only_the_word_layer_learns(backbones):
    model, processor = build(backbones, "opt", **SETTINGS)
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not name.startswith("bridge.")}
    batch = processor(images=pictures(), text=["a red circle", "a blue square", "a green triangle"])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    model.train()
    losses = []
    for _ in range(100):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "bridge.to_words.weight",
        "bridge.to_words.bias",
    ]
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    model.eval()
    assert model.get_image_words(batch["pixel_values"])[0][:2] in (["red", "circle"], ["circle", "red"])


def test_a_word_bridge_refuses_what_it_cannot_do(word_bridge, backbones):
    model, processor = word_bridge
    pixel_values = processor(images=pictures()[:1])["pixel_values"]
    for call in (model.get_image_features, model.get_image_prefix, model):
        with pytest.raises(ValueError, match="no image prefix or image features"):
            call(pixel_values)
    with pytest.raises(ValueError, match="does not tokenise the word-bridge layout piece by piece"):
        build(backbones, "t5", **SETTINGS)  # SentencePiece adds a "▁" before every piece
    base = {k: v for k, v in SETTINGS.items() if k not in ("word_bridge_layout", "assignment_loss_weight")}
    for bad, match in (
        ({"word_bridge_layout": "no slot"}, "exactly once"),
        ({"word_bridge_layout": "{words} {words}"}, "exactly once"),
        ({"word_bridge_threshold": float("nan")}, "threshold"),
        ({"word_bridge_top_k": 0}, "top_k"),
        ({"assignment_loss_weight": 0.1, "word_bridge_layout": LAYOUT}, "assignment_loss_weight to 0"),
        ({"word_bridge_words": [], "word_bridge_layout": LAYOUT}, "non-empty list of words"),
    ):
        with pytest.raises(ValueError, match=match):
            VLAPConfig(**{**base, "assignment_loss_weight": 0.0, **bad})


def test_the_web_demos_words_tab_shows_the_word_probabilities(word_bridge, tmp_path):
    web = pytest.importorskip("vlap.app", reason="the web demo needs the [app] extra (gradio)")
    from gradio.data_classes import FileData

    model, processor = word_bridge
    shape_image("red", "circle").save(tmp_path / "red_circle.png")
    chart, per_token = web.Demo(model, processor).words(FileData(path=str(tmp_path / "red_circle.png")), top_k=4)
    pixel_values = processor(images=[str(tmp_path / "red_circle.png")])["pixel_values"]
    with torch.no_grad():
        tokens = model.vision_model(pixel_values=pixel_values).last_hidden_state.mean(dim=1)
        top = torch.sigmoid(model.bridge.to_words(tokens)).topk(4)
    frame = chart.constructor_args["value"]
    assert list(frame["word"]) == [WORDS[i] for i in top.indices[0]]
    assert torch.allclose(torch.tensor(frame["weight"].tolist()), top.values[0], atol=1e-6)
    assert per_token.empty


def test_caption_words_are_the_frequent_content_words():
    captions = ["A red circle", "a red square on a white background", "the t-shirt is red", "don't stop"]
    assert caption_words(captions, 4) == ["red", "circle", "square", "white"]
    assert set(caption_words(captions, 100)) == {
        "red",
        "circle",
        "square",
        "white",
        "background",
        "t-shirt",
        "don't",
        "stop",
    }
    with pytest.raises(ValueError, match="no content word"):
        caption_words(["a the of", "is"], 5)


def test_moving_re_tokenises_the_strings_and_keeps_the_weights(word_bridge, other_llm, tmp_path):
    model, processor = word_bridge
    source = tmp_path / "source"
    model.save_pretrained(source)
    processor.save_pretrained(source)
    report = transfer(str(source), str(other_llm), tmp_path / "moved")
    assert report["coverage"] == 1.0 and report["missing"] == []
    moved = VLAPForConditionalGeneration.from_pretrained(tmp_path / "moved").eval()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(other_llm)
    assert moved.config.word_bridge_word_ids == [
        tokenizer(" " + w, add_special_tokens=False)["input_ids"] for w in WORDS
    ]
    assert moved.config.word_bridge_word_ids != model.config.word_bridge_word_ids  # the ids did change
    assert torch.equal(moved.bridge.to_words.weight, model.bridge.to_words.weight)
    assert torch.equal(moved.bridge.to_words.bias, model.bridge.to_words.bias)
    pixel_values = processor(images=pictures())["pixel_values"]
    assert moved.get_image_words(pixel_values) == model.get_image_words(pixel_values)
    # The moved model shows the new LLM the same text: its generation equals that LLM reading it written out.
    prompt = tokenizer("Caption:", add_special_tokens=False, return_tensors="pt")
    ids = moved.generate(
        pixel_values=pixel_values[:1], prompt_input_ids=prompt["input_ids"], max_new_tokens=5, do_sample=False
    )
    text = tokenizer(written_out(moved.get_image_words(pixel_values[:1])[0], LAYOUT, "Caption:"), return_tensors="pt")
    expected = moved.language_model.generate(
        input_ids=text["input_ids"], max_new_tokens=5, do_sample=False, generation_config=moved.generation_config
    )[:, text["input_ids"].shape[1] :]
    assert ids[0, : expected.shape[1]].tolist() == expected[0].tolist()


FRESH_PROCESS = NO_REPO_IMPORTS + textwrap.dedent(
    """
    from PIL import Image
    from transformers import AutoModel, AutoProcessor, pipeline

    folder, image_path = sys.argv[1], sys.argv[2]
    image = Image.open(image_path)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    inputs = processor(images=[image])
    captioner = pipeline("image-to-text", model=folder, trust_remote_code=True)
    chat = pipeline("image-text-to-text", model=folder, trust_remote_code=True)
    question = "Question: what colour is the shape? Answer:"
    print(json.dumps({
        "answer": chat(images=image, text=question, max_new_tokens=3, do_sample=False)[0]["generated_text"],
        "answer_ids": model.generate(
            **processor(images=[image], prompt=question), max_new_tokens=3, do_sample=False
        ).tolist(),
        "words": model.get_image_words(inputs["pixel_values"]),
        "ids": model.generate(**inputs, max_new_tokens=5, do_sample=False).tolist(),
        "caption": captioner(image, max_new_tokens=5, do_sample=False)[0]["generated_text"],
    }))
    """
)


@pytest.mark.slow
def test_a_trained_word_bridge_moved_to_another_llm_round_trips_in_a_fresh_process(
    backbones, caption_folder, other_llm, tmp_path
):
    """train.py trains a word bridge (its words: the captions' content words), `vlap transfer` moves it, and the moved
    folder loads through AutoModel / pipeline in a process that cannot import this repository."""
    config = write_config(
        tmp_path / "w.yaml",
        backbones,
        caption_folder,
        tmp_path / "run",
        text_model=str(backbones["llama"]),
        max_steps=30,
        learning_rate=1e-2,
        model={k: v for k, v in SETTINGS.items() if k != "word_bridge_words"},
    )
    result = run_train(config)
    assert "word bridge: " in result.stdout + result.stderr
    trained = tmp_path / "run" / "final"
    words = VLAPConfig.from_pretrained(trained).word_bridge_words
    assert set(words) == {
        "red",
        "green",
        "blue",
        "yellow",
        "black",
        "circle",
        "square",
        "triangle",
        "plain",
        "background",
    }
    moved = tmp_path / "moved"
    cli = subprocess.run(
        [sys.executable, "-m", "vlap.cli", "transfer", str(trained), "--to-llm", str(other_llm), "--out", str(moved)],
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 0, cli.stderr[-2000:]
    image = tmp_path / "red-circle.png"
    shape_image("red", "circle").save(image)
    loaded, _ = load_in_fresh_process(moved, image, {}, script=FRESH_PROCESS)
    model = VLAPForConditionalGeneration.from_pretrained(moved).eval()
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(moved)
    inputs = processor(images=[shape_image("red", "circle")])
    assert loaded["words"] == model.get_image_words(inputs["pixel_values"])
    assert loaded["ids"] == model.generate(**inputs, max_new_tokens=5, do_sample=False).tolist()
    assert loaded["caption"].strip() == processor.batch_decode(loaded["ids"], skip_special_tokens=True)[0].strip()
    answer = processor.batch_decode(loaded["answer_ids"], skip_special_tokens=True)[0].strip()
    assert answer and answer in loaded["answer"]
