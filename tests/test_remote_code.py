"""save_pretrained -> a fresh process, offline, where this repository cannot be imported -> same outputs."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import NO_REPO_IMPORTS, build, image_processor, load_in_fresh_process

GENERATION = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)


@pytest.mark.slow
@pytest.mark.parametrize("llm", ["t5", "opt", "llama"])
def test_saved_folder_loads_offline_in_a_fresh_process(backbones, llm, tmp_path):
    model, processor = build(backbones, llm)
    model.eval()
    folder, image_path = tmp_path / "vlap", tmp_path / "photo.png"
    Image.fromarray(np.random.RandomState(3).randint(0, 255, (40, 48, 3), dtype=np.uint8)).save(image_path)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    saved = {p.name for p in folder.iterdir()}
    assert {
        "modeling_vlap.py",
        "configuration_vlap.py",
        "assignment_prediction.py",
        "optimal_transport.py",
        "pipeline_vlap.py",
        "processing_vlap.py",
        "model.safetensors",
        "config.json",
    } <= saved
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in saved)
    assert "efficientnet_lite.py" not in saved  # shipped only with an EfficientNet-Lite vision model

    image = Image.open(image_path)
    ids = model.generate(**processor(images=[image]), **GENERATION)
    question = "Question: what colour is the shape? Answer:"
    answer_ids = model.generate(**processor(images=[image], prompt=question), **GENERATION)
    features = model.get_image_features(processor(images=[image])["pixel_values"])

    loaded, stderr = load_in_fresh_process(folder, image_path, GENERATION)
    assert (loaded["model_class"], loaded["processor_class"]) == ("VLAPForConditionalGeneration", "VLAPProcessor")
    assert loaded["ids"] == ids.tolist()
    assert loaded["caption"] == processor.batch_decode(ids, skip_special_tokens=True)[0].strip()
    assert loaded["answer"] == processor.batch_decode(answer_ids, skip_special_tokens=True)[0].strip()
    torch.testing.assert_close(torch.tensor(loaded["image_features"]), features)
    # zero-shot-image-classification: softmax over labels of the word-space score, sum over words of the label's
    # assignment target times log softmax(cos(image, every word embedding) / temperature).
    labels = ["red circle", "blue square", "green triangle"]
    tokens = processor(text=[f"a photo of a {label}." for label in labels])  # tokenised as captions are
    text = model.get_text_features(tokens["input_ids"], tokens["attention_mask"])
    targets = model.assignment_prediction.caption_assignments(
        tokens["input_ids"], tokens["attention_mask"], model.vocabulary(), model.word_codes(text)
    )
    cosines = torch.nn.functional.cosine_similarity(features.unsqueeze(1), model.word_embeddings.unsqueeze(0), dim=-1)
    log_p = torch.log_softmax(cosines / model.config.assignment_temperature, dim=-1)
    probabilities = torch.softmax(log_p @ targets.T, dim=-1)[0]
    expected = sorted(zip(probabilities.tolist(), labels), reverse=True)
    assert [row["label"] for row in loaded["zero_shot"]] == [label for _, label in expected]
    torch.testing.assert_close(
        torch.tensor([row["score"] for row in loaded["zero_shot"]]),
        torch.tensor([score for score, _ in expected]),
        atol=1e-5,
        rtol=0,
    )
    # image-feature-extraction: the mapped visual tokens, and pooled: the image features.
    prefix = model.get_image_prefix(processor(images=[image])["pixel_values"])
    torch.testing.assert_close(torch.tensor(loaded["tokens"]), prefix, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(loaded["pooled"]), features, atol=1e-5, rtol=1e-5)
    noise = [line for line in stderr.splitlines() if "warn" in line.lower() or "traceback" in line.lower()]
    assert not noise, stderr


CHAT_IN_FRESH_PROCESS = NO_REPO_IMPORTS + textwrap.dedent(
    """
    from transformers import AutoModel, AutoProcessor, pipeline

    folder, image, settings = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    chat = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": [{"type": "image", "image": image},
                                         {"type": "text", "text": "What colour is the shape?"}]}]
    pipe = pipeline("image-text-to-text", model=folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    inputs = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)
    print(json.dumps({
        "text": pipe(images=image, text="Question: what colour is it? Answer:", return_full_text=False, **settings),
        "full": pipe(images=image, text="Question: what colour is it? Answer:", **settings),
        "batch": pipe(images=[image, image], text=["A picture of", "Question: is it red? Answer:"],
                      return_full_text=False, **settings),
        "chat": pipe(text=chat, **settings),
        "tensors": pipe(images=image, text="Question: what colour is it? Answer:", return_tensors=True,
                        **settings)[0]["generated_token_ids"].tolist(),
        "chat_ids": model.generate(**inputs, **settings).tolist(),
        "rendered": processor.apply_chat_template(chat, add_generation_prompt=True),
    }))
    """
)
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}"
    "<|assistant|>{% endif %}"
)


@pytest.mark.slow
@pytest.mark.parametrize("llm", ["t5", "opt", "llama"])
def test_image_text_to_text_pipeline_with_prompts_and_chat_messages(backbones, llm, tmp_path):
    """The standard pipeline on a saved folder in a fresh process: text prompts (batched, with and without the
    prompt in the output) and chat messages with a system turn, each equal to the direct generate call."""
    model, processor = build(backbones, llm)
    model.eval()
    if llm == "llama":  # a chat LLM: its tokenizer's template renders the turns; T5 has none (turns joined by lines)
        processor.tokenizer.chat_template = TINY_CHAT_TEMPLATE
    folder, image_path = tmp_path / "vlap", tmp_path / "photo.png"
    Image.fromarray(np.random.RandomState(5).randint(0, 255, (40, 48, 3), dtype=np.uint8)).save(image_path)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    script = tmp_path / "chat.py"
    script.write_text(CHAT_IN_FRESH_PROCESS)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, str(script), str(folder), str(image_path), json.dumps(GENERATION)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])

    def generate(prompt: str) -> torch.Tensor:
        return model.generate(**processor(images=[Image.open(image_path)], prompt=prompt), **GENERATION)

    def reply(prompt: str) -> str:
        return processor.batch_decode(generate(prompt), skip_special_tokens=True)[0]

    question = "Question: what colour is it? Answer:"
    assert loaded["tensors"] == generate(question)[0].tolist()  # the same ids (tiny T5's decode to "")
    assert loaded["text"] == [{"input_text": question, "generated_text": reply(question)}]
    assert loaded["full"][0]["generated_text"] == question + reply(question)
    assert [row["generated_text"] for row in loaded["batch"]] == [
        reply("A picture of"),
        reply("Question: is it red? Answer:"),
    ]
    rendered = (
        "<|system|>Be brief.\n<|user|>What colour is the shape?\n<|assistant|>"
        if llm == "llama"
        else "Be brief.\nWhat colour is the shape?"
    )
    assert loaded["rendered"] == rendered
    assert loaded["chat_ids"] == generate(rendered).tolist()
    answer = loaded["chat"][0]["generated_text"][-1]
    assert answer["role"] == "assistant" and answer["content"] == reply(rendered)


@pytest.mark.slow
def test_an_efficientnet_lite_export_ships_its_vision_code_and_loads_in_a_fresh_process(backbones, tmp_path):
    """EfficientNet-Lite is not a transformers model: its module travels with the models that use it (and only
    with them, see above) and is imported from the saved folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modeling_vlap import VLAPConfig, VLAPForConditionalGeneration, VLAPProcessor
    from modeling_vlap.efficientnet_lite import EfficientNetLiteConfig, EfficientNetLiteModel

    torch.manual_seed(0)
    stages = [[1, 3, 1, 1, 8, 8], [1, 3, 2, 2, 8, 16]]  # [repeats, kernel, stride, expand, in, out]
    vision = EfficientNetLiteModel(EfficientNetLiteConfig(stages=stages, stem_channels=8, hidden_dim=16, image_size=32))
    language = AutoModelForCausalLM.from_pretrained(backbones["opt"])
    config = VLAPConfig(
        vision_config=vision.config.to_dict(), text_config=language.config.to_dict(), num_visual_tokens=4
    )
    model = VLAPForConditionalGeneration(config, vision_model=vision, language_model=language).eval()
    processor = VLAPProcessor(
        image_processor=image_processor(), tokenizer=AutoTokenizer.from_pretrained(backbones["opt"])
    )
    folder, image_path = tmp_path / "vlap", tmp_path / "photo.png"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    assert (folder / "efficientnet_lite.py").exists()
    Image.fromarray(np.random.RandomState(4).randint(0, 255, (40, 48, 3), dtype=np.uint8)).save(image_path)
    ids = model.generate(**processor(images=[Image.open(image_path)]), **GENERATION)

    assert load_in_fresh_process(folder, image_path, GENERATION)[0]["ids"] == ids.tolist()
