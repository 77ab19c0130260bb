import json
import re

import numpy as np
import pytest
import torch
from tiny import CAPTIONS, REPO, build, images, shape_image
from transformers import CLIPVisionModel

from modeling_vlap import VLAPConfig, VLAPForConditionalGeneration
from modeling_vlap.modeling_vlap import pack_padding
from vlap.tasks import PAPER_VQA_TEMPLATE, first_line

LLMS = ["t5", "opt", "llama"]


def test_pack_padding_moves_padding_and_keeps_token_order():
    mask = torch.tensor([[1, 0, 1, 1, 0], [1, 1, 0, 0, 0]])
    values = torch.tensor([[1, -1, 2, 3, -1], [4, 5, -1, -1, -1]])  # -1 marks padding
    left_mask, left = pack_padding(mask, values, padding_side="left")
    assert left.tolist() == [[1, 2, 3], [-1, 4, 5]] and left_mask.tolist() == [[1, 1, 1], [0, 1, 1]]
    right_mask, right = pack_padding(mask, values, padding_side="right")
    assert right.tolist() == [[1, 2, 3], [4, 5, -1]] and right_mask.tolist() == [[1, 1, 1], [1, 1, 0]]


@pytest.mark.parametrize("llm", LLMS)
def test_bridge_dims_come_from_the_configs(backbones, llm):
    model, _ = build(backbones, llm)
    embedding = model.language_model.get_input_embeddings()
    assert model.bridge.in_features == model.vision_model.config.hidden_size
    assert model.bridge.out_features == embedding.embedding_dim == model.config.projection_dim
    assert model.word_prior.shape == (embedding.num_embeddings,)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"bridge.weight", "bridge.bias"}
    assert model.num_parameters(only_trainable=True) == model.bridge.weight.numel() + model.bridge.bias.numel()


def test_pretrained_backbone_weights_are_kept(backbones):
    model, _ = build(backbones, "llama")
    reference = CLIPVisionModel.from_pretrained(backbones["clip"])  # the tower of the full CLIP checkpoint
    for name, tensor in reference.state_dict().items():
        assert torch.equal(model.vision_model.state_dict()[name], tensor), name
    from transformers import AutoModelForCausalLM

    llm = AutoModelForCausalLM.from_pretrained(backbones["llama"])
    for name, tensor in llm.state_dict().items():
        assert torch.equal(model.language_model.state_dict()[name], tensor), name


@pytest.mark.parametrize("llm", LLMS)
def test_training_lowers_the_loss_and_touches_only_the_bridge(backbones, llm):
    model, processor = build(backbones, llm)
    model.train()
    assert not model.vision_model.training and not model.language_model.training
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("bridge.")}
    batch = processor(images=images(4), text=CAPTIONS)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses, caption_losses = [], []
    for _ in range(30):
        out = model(**batch)
        optimizer.zero_grad()
        out.loss.backward()
        for name, parameter in model.named_parameters():
            assert (parameter.grad is not None) == name.startswith("bridge."), name
        optimizer.step()
        losses.append(out.loss.item())
        caption_losses.append(out.caption_loss.item())
    assert losses[-1] < 0.85 * losses[0], losses
    assert caption_losses[-1] < caption_losses[0], caption_losses
    torch.testing.assert_close(out.loss, out.caption_loss + 0.1 * out.assignment_loss)
    for name, tensor in model.state_dict().items():
        if not name.startswith("bridge."):
            assert torch.equal(tensor, frozen[name]), f"{name} changed"


def _plain_sinkhorn(scores, prior, epsilon, iterations):
    q = torch.exp((scores.double() - scores.double().max()) / epsilon)
    for _ in range(iterations):
        q = q / q.sum(dim=0, keepdim=True) * prior.double() * scores.shape[0]
        q = q / q.sum(dim=1, keepdim=True)
    return q


def test_assignment_loss_matches_an_independent_computation(backbones):
    model, processor = build(backbones, "opt", text_representation="hidden_states", word_marginal_weight=None)
    batch = processor(images=images(4), text=CAPTIONS)
    model.fit_word_prior(torch.arange(model.word_prior.numel()) % 7)
    with torch.no_grad():
        out = model(**batch)
        # Codes from scratch: cosine of pooled representations with every word embedding.
        words = torch.nn.functional.normalize(model.language_model.get_input_embeddings().weight.double(), dim=-1)
        visual_tokens = model.vision_model(pixel_values=batch["pixel_values"]).last_hidden_state
        prefix = torch.nn.functional.linear(visual_tokens, model.bridge.weight, model.bridge.bias)
        image_codes = torch.nn.functional.normalize(prefix.double().mean(1), dim=-1) @ words.T
        states = model.language_model.model.decoder(batch["input_ids"], batch["attention_mask"]).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).double()
        text_codes = torch.nn.functional.normalize((states.double() * mask).sum(1) / mask.sum(1), dim=-1) @ words.T
    torch.testing.assert_close(out.image_codes.double(), image_codes, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.text_codes.double(), text_codes, atol=1e-5, rtol=0)
    q_text = _plain_sinkhorn(text_codes, model.word_prior, 0.01, 3)
    q_image = _plain_sinkhorn(image_codes, model.word_prior, 0.01, 3)
    expected = -0.5 * (
        (q_text * torch.log_softmax(image_codes / 0.01, -1)).sum(-1).mean()
        + (q_image * torch.log_softmax(text_codes / 0.01, -1)).sum(-1).mean()
    )
    torch.testing.assert_close(out.assignment_loss.double(), expected, rtol=1e-4, atol=1e-4)


def test_caption_only_skips_the_assignment_loss(backbones):
    model, processor = build(backbones, "t5", assignment_loss_weight=0.0)
    out = model(**processor(images=images(2), text=CAPTIONS[:2]))
    assert out.assignment_loss is None and out.image_codes is None
    torch.testing.assert_close(out.loss, out.caption_loss)


def test_fit_word_prior_is_a_tempered_softmax_of_frequencies(backbones):
    model, _ = build(backbones, "llama")
    counts = torch.randint(0, 50, model.word_prior.shape)
    model.fit_word_prior(counts)
    frequencies = counts.double().numpy() / counts.max().item()
    expected = np.exp(frequencies / 0.25) / np.exp(frequencies / 0.25).sum()
    np.testing.assert_allclose(model.word_prior.numpy(), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="token_counts"):
        model.fit_word_prior(torch.zeros(3))


@pytest.mark.parametrize("llm", LLMS)
def test_batched_generate_equals_one_by_one(backbones, llm):
    model, processor = build(backbones, llm)
    model.eval()
    pictures = images(3)
    prompts = ["A picture of", "Question: what colour is the shape? Answer:", ""]
    settings = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    batched = model.generate(**processor(images=pictures, prompt=prompts), **settings)
    for i in range(3):
        single = model.generate(**processor(images=[pictures[i]], prompt=prompts[i]), **settings)
        assert batched[i].tolist() == single[0].tolist(), f"row {i} ({prompts[i]!r})"


def test_generation_config_reaches_the_llm(backbones):
    model, processor = build(backbones, "llama")
    model.eval()
    model.generation_config.max_new_tokens = 25
    model.generation_config.min_new_tokens = 25
    ids = model.generate(**processor(images=images(1)))
    assert ids.shape[1] == 25  # not the LLM's default max_length of 20
    assert model.generate(**processor(images=images(1)), max_new_tokens=3, min_new_tokens=3).shape[1] == 3


def test_visual_token_pooling(backbones):
    model, processor = build(backbones, "t5", num_visual_tokens=4)
    prefix = model.get_image_prefix(processor(images=images(2))["pixel_values"])
    assert prefix.shape == (2, 4, model.config.projection_dim)
    feature_map = torch.randn(2, model.config.vision_hidden_size, 6, 6)  # a CNN's [B, C, h, w] output
    assert model.get_image_prefix(vision_hidden_states=feature_map).shape == (2, 4, model.config.projection_dim)
    model.config.num_visual_tokens = 5
    with pytest.raises(ValueError, match="square"):
        model.get_image_prefix(vision_hidden_states=feature_map)


def test_features_and_words(backbones):
    model, processor = build(backbones, "llama")
    image_features = model.get_image_features(processor(images=images(3))["pixel_values"])
    text = processor(text=CAPTIONS)
    text_features = model.get_text_features(text["input_ids"], text["attention_mask"])
    assert image_features.shape == (3, model.config.projection_dim)
    assert text_features.shape == (4, model.config.projection_dim)
    torch.testing.assert_close(image_features.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(text_features.norm(dim=-1), torch.ones(4))
    weights, ids = model.image_to_words(processor(images=images(2))["pixel_values"], top_k=5)
    assert weights.shape == ids.shape == (2, 5) and (weights[:, :-1] >= weights[:, 1:]).all()
    words = processor.decode_words(ids)
    assert len(words) == 2 and all(isinstance(w, str) for row in words for w in row)


def test_mismatched_projection_dim_is_rejected(backbones):
    with pytest.raises(ValueError, match="projection_dim=512 does not match .* width 32"):
        build(backbones, "t5", projection_dim=512)


def test_bad_config_values_are_rejected():
    with pytest.raises(ValueError, match="sinkhorn_epsilon"):
        VLAPConfig(sinkhorn_epsilon=0)
    with pytest.raises(ValueError, match="num_visual_tokens"):
        VLAPConfig(num_visual_tokens=0)


def test_forward_without_captions_gives_image_features_and_counts_must_match(backbones):
    model, processor = build(backbones, "t5")
    pixels = processor(images=images(2))["pixel_values"]
    out = model(pixel_values=pixels)
    torch.testing.assert_close(out.last_hidden_state, model.get_image_prefix(pixels))
    torch.testing.assert_close(out.pooler_output, model.get_image_features(pixels))
    batch = processor(images=images(2))
    batch.update(processor(text=CAPTIONS[:3]))
    with pytest.raises(ValueError, match="2 images but 3 captions"):
        model(**batch)


def test_bridge_only_save_holds_the_bridge_and_needs_backbone_names(backbones, tmp_path):
    model, _ = build(backbones, "opt")
    assert model.config.backbones["text"]["name_or_path"] == str(backbones["opt"])
    model.save_pretrained(tmp_path / "bridge", bridge_only=True)
    reloaded = VLAPForConditionalGeneration.from_pretrained(tmp_path / "bridge")
    assert not model.config.bridge_only and not reloaded.config.bridge_only  # the loaded model holds everything
    for key, value in model.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[key]), key
    model.config.backbones = None
    with pytest.raises(ValueError, match="config.backbones"):
        model.save_pretrained(tmp_path / "nameless", bridge_only=True)


@pytest.mark.parametrize("llm", ["opt", "llama"])
def test_caption_loss_from_caption_positions_equals_the_full_lm_loss(backbones, llm):
    model, processor = build(backbones, llm)
    batch = processor(images=images(3), text=CAPTIONS[:3], prompt=["A picture of", "Question: what is it? Answer:", ""])
    with torch.no_grad():
        out = model(**batch)
        # Independently: the whole [prefix; prompt; caption] sequence through the LLM with its own loss.
        prefix = model.get_image_prefix(batch["pixel_values"])
        embed = model.language_model.get_input_embeddings()
        rows, labels = [], []
        for i in range(3):
            prompt = batch["prompt_input_ids"][i][batch["prompt_attention_mask"][i].bool()]
            caption = batch["input_ids"][i][batch["attention_mask"][i].bool()]
            rows.append(torch.cat([prefix[i], embed(prompt), embed(caption)]))
            labels.append(torch.cat([torch.full((len(prefix[i]) + len(prompt),), -100), caption]))
        width = max(len(r) for r in rows)
        embeds = torch.stack([torch.cat([r, r.new_zeros(width - len(r), r.shape[1])]) for r in rows])
        mask = torch.stack([torch.arange(width) < len(r) for r in rows]).long()
        label = torch.stack([torch.cat([row, torch.full((width - len(row),), -100)]) for row in labels])
        expected = model.language_model(inputs_embeds=embeds, attention_mask=mask, labels=label).loss
    torch.testing.assert_close(out.caption_loss, expected, atol=1e-5, rtol=1e-5)
    assert out.logits.shape[1] < embeds.shape[1]  # the prefix and most of the prompt never reach the LM head


def test_word_embedding_text_features_are_the_sif_weighted_mean(backbones):
    model, processor = build(backbones, "llama", text_representation="word_embeddings")
    counts = torch.arange(model.word_prior.numel()).double() % 11 + 1
    model.fit_word_prior(counts)
    batch = processor(text=CAPTIONS[:2])
    features = model.get_text_features(batch["input_ids"], batch["attention_mask"])
    frequency = counts / counts.sum()
    embeddings = model.word_embeddings.detach().double()
    for row in range(2):
        ids = [
            i
            for i, m in zip(batch["input_ids"][row].tolist(), batch["attention_mask"][row].tolist())
            if m and i != processor.tokenizer.eos_token_id
        ]
        weights = 1e-3 / (1e-3 + frequency[ids])
        expected = torch.nn.functional.normalize((weights.unsqueeze(1) * embeddings[ids]).sum(0), dim=0)
        torch.testing.assert_close(features[row].double(), expected, atol=1e-5, rtol=0)
    # The frequency is kept with the model: a save/load round trip gives the same features.
    assert torch.equal(model.assignment_prediction.word_frequency, frequency.float())


def test_word_assignment_targets_mix_each_caption_tokens_own_assignment(backbones):
    model, processor = build(backbones, "llama", text_representation="word_assignments", word_marginal_weight=0.0)
    counts = torch.arange(model.word_prior.numel()).double() % 5 + 1
    model.fit_word_prior(counts)
    batch = processor(images=images(2), text=CAPTIONS[:2])
    with torch.no_grad():
        out = model(**batch)
    frequency, words = counts / counts.sum(), torch.nn.functional.normalize(model.word_embeddings.double(), dim=-1)
    for row in range(2):
        ids = [
            i
            for i, m in zip(batch["input_ids"][row].tolist(), batch["attention_mask"][row].tolist())
            if m and i != processor.tokenizer.eos_token_id
        ]
        weights = 1e-3 / (1e-3 + frequency[ids])
        per_token = torch.softmax(words[ids] @ words.T / 0.01, dim=-1)  # marginal_weight 0: a row softmax per token
        expected = (weights.unsqueeze(1) * per_token).sum(0) / weights.sum()
        torch.testing.assert_close(out.text_targets[row].double(), expected, atol=1e-5, rtol=0)
        # Every caption token is its own nearest word, so the target spreads over the caption's words by weight.
        top = out.text_targets[row].topk(len(set(ids))).indices.tolist()
        assert set(top) == set(ids)
    torch.testing.assert_close(out.text_targets.sum(-1), torch.ones(2), atol=1e-5, rtol=0)


def test_word_codes_are_cosines_and_follow_a_changed_embedding_matrix(backbones):
    model, _ = build(backbones, "llama")
    features = torch.randn(3, model.word_embeddings.shape[1])

    def cosines():
        return torch.nn.functional.cosine_similarity(features.unsqueeze(1), model.word_embeddings.unsqueeze(0), dim=-1)

    torch.testing.assert_close(model.word_codes(features), cosines(), atol=1e-5, rtol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 training: codes stay float32-exact (divided by 0.01)
        torch.testing.assert_close(model.word_codes(features), cosines(), atol=1e-5, rtol=0)
    with torch.no_grad():  # the cached norms must not outlive an in-place change (load_state_dict copies in place)
        model.word_embeddings[3].add_(torch.randn(model.word_embeddings.shape[1]))
    torch.testing.assert_close(model.word_codes(features), cosines(), atol=1e-5, rtol=0)


def test_word_codes_under_bf16_autocast_keep_a_float32_forward_and_the_float32_gradient(backbones):
    """Under autocast the codes' backward product runs in bfloat16 from a kept copy of the frozen matrix: the codes stay
    float32-exact, the gradient stays that of the cosines, and both follow a changed embedding matrix."""
    model, _ = build(backbones, "llama")
    features = torch.randn(3, model.word_embeddings.shape[1], requires_grad=True)
    weights = torch.randn(3, model.word_embeddings.shape[0])

    def codes_and_gradient(autocast: bool):
        features.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            codes = model.word_codes(features)
        (codes * weights).sum().backward()
        return codes.detach(), features.grad.clone()

    def cosines_and_gradient():  # independent: autograd through torch's cosine similarity, float32
        features.grad = None
        cosines = torch.nn.functional.cosine_similarity(
            features.unsqueeze(1), model.word_embeddings.unsqueeze(0), dim=-1
        )
        (cosines * weights).sum().backward()
        return cosines.detach(), features.grad.clone()

    for _ in range(2):
        expected_codes, expected_gradient = cosines_and_gradient()
        codes, gradient = codes_and_gradient(autocast=True)
        assert codes.dtype == torch.float32
        torch.testing.assert_close(codes, expected_codes, atol=1e-5, rtol=0)
        scale = expected_gradient.abs().max().item()
        torch.testing.assert_close(gradient, expected_gradient, atol=0.02 * scale, rtol=0)
        torch.testing.assert_close(codes_and_gradient(autocast=False)[1], expected_gradient, atol=1e-5 * scale, rtol=0)
        with torch.no_grad():  # the kept bfloat16 copy must not outlive an in-place change
            model.word_embeddings.mul_(-1.0)


@pytest.mark.parametrize("representation", ["word_embeddings", "word_assignments", "hidden_states"])
def test_caption_codes_equal_the_codes_of_the_text_features_and_follow_a_changed_embedding_matrix(
    backbones, representation
):
    """Training derives caption codes from kept token codes; they must be the cosines of the caption features."""
    model, processor = build(backbones, "llama", text_representation=representation)
    model.fit_word_prior(torch.arange(model.word_prior.numel()).double() % 5 + 1)
    batch = processor(text=CAPTIONS[:3] + ["a"])
    ids, mask = batch["input_ids"], batch["attention_mask"]

    def check():
        features = model.get_text_features(ids, mask)
        paper = representation == "hidden_states"  # its text features come from the LLM's forward
        text_codes, token_codes = model.assignment_prediction.caption_codes(
            ids, mask, model.vocabulary(), features if paper else None
        )
        words = model.word_embeddings.detach()
        cosines = torch.nn.functional.cosine_similarity(features.unsqueeze(1), words.unsqueeze(0), dim=-1)
        torch.testing.assert_close(text_codes, cosines, atol=1e-5, rtol=0)
        if representation == "hidden_states":
            assert token_codes.numel() == 0
            return
        tokens = torch.unique(ids[model.assignment_prediction.sif_weights(ids, mask, model.vocabulary()) > 0])
        expected = torch.nn.functional.cosine_similarity(words[tokens].unsqueeze(1), words.unsqueeze(0), dim=-1)
        torch.testing.assert_close(token_codes, expected, atol=1e-5, rtol=0)

    with torch.no_grad():
        check()
        check()  # now from the kept token codes
        model.word_embeddings[ids[0, 1]].add_(torch.randn(model.word_embeddings.shape[1]))  # as load_state_dict does
        check()


def test_classify_in_code_space_scores_each_label_target_under_the_image_assignment(backbones):
    from vlap.tasks import classify

    model, processor = build(backbones, "llama", text_representation="word_assignments", word_marginal_weight=0.01)
    labels, pictures = ["red circle", "blue square", "green star"], images(4)
    ranked = classify(model, processor, pictures, labels, method="code")
    with torch.no_grad():
        pixels = processor(images=pictures)["pixel_values"]
        image = model.get_image_prefix(pixels).mean(dim=1)
        codes = torch.nn.functional.cosine_similarity(image.unsqueeze(1), model.word_embeddings.unsqueeze(0), dim=-1)
        log_p = torch.log_softmax(codes / model.config.assignment_temperature, dim=-1)
        tokens = processor(text=[f"a {label}" for label in labels])
        text = model.get_text_features(tokens["input_ids"], tokens["attention_mask"])
        targets = model.assignment_prediction.caption_assignments(
            tokens["input_ids"], tokens["attention_mask"], model.vocabulary(), model.word_codes(text)
        )
    expected = torch.softmax(log_p @ targets.T, dim=-1)
    for row, hits in enumerate(ranked):
        assert [label for label, _ in hits] == [labels[i] for i in expected[row].argsort(descending=True)]
        torch.testing.assert_close(
            torch.tensor([score for _, score in hits]), expected[row].sort(descending=True).values, atol=1e-4, rtol=1e-4
        )
    with pytest.raises(ValueError, match="method"):
        classify(model, processor, pictures, labels, method="likelihood")


@pytest.mark.parametrize("marginal_weight", [None, 0.01])
def test_word_assignment_targets_equal_the_plan_over_every_token_row(backbones, marginal_weight):
    """Computed once per distinct token, the targets must be those of one Sinkhorn row per caption token."""
    from modeling_vlap.optimal_transport import sinkhorn_knopp

    model, processor = build(
        backbones, "llama", text_representation="word_assignments", word_marginal_weight=marginal_weight
    )
    model.fit_word_prior(torch.arange(model.word_prior.numel()).double() % 7 + 1)
    batch = processor(text=CAPTIONS[:4] + CAPTIONS[:2])  # repeated captions: repeated token rows
    ids, mask = batch["input_ids"], batch["attention_mask"]
    targets = model.assignment_prediction.caption_assignments(ids, mask, model.vocabulary(), text_codes=None)
    weights = model.assignment_prediction.sif_weights(ids, mask, model.vocabulary())
    rows = weights > 0
    words = torch.nn.functional.normalize(model.word_embeddings.detach(), dim=-1)
    every_row = sinkhorn_knopp(
        words[ids[rows]] @ words.T,
        model.word_prior,
        model.config.sinkhorn_epsilon,
        model.config.sinkhorn_iterations,
        marginal_weight,
    )
    for sample in range(len(ids)):
        mine = rows.nonzero()[:, 0] == sample
        expected = (weights[rows][mine].unsqueeze(1) * every_row[mine]).sum(0) / weights[sample].sum()
        torch.testing.assert_close(targets[sample], expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("llm", ["t5", "llama"])
def test_caption_log_likelihood_is_the_summed_token_loss_and_ranks_answers(backbones, llm):
    from vlap.tasks import choose_answer

    model, processor = build(backbones, llm)
    image = images(1)
    prompt = "Question: what colour is the shape? Answer:"
    candidates = ["red", "blue circle", "green"]
    totals = []
    for candidate in candidates:
        inputs = processor(images=image, prompt=prompt)
        answer = processor.answer_inputs([candidate], prompt)
        with torch.no_grad():
            loss = model(**inputs, **answer).caption_loss  # token mean over this one answer (EOS included)
        totals.append(-loss.item() * answer["attention_mask"].sum().item())
    inputs = processor(images=image * 3, prompt=prompt)
    scores = model.caption_log_likelihood(**processor.answer_inputs(candidates, prompt), **inputs)
    torch.testing.assert_close(scores, torch.tensor(totals), atol=1e-4, rtol=1e-5)
    chosen = choose_answer(
        model, processor, image, [prompt.split(": ", 1)[1].split(" Answer")[0]], candidates, template=PAPER_VQA_TEMPLATE
    )
    assert chosen == [candidates[max(range(3), key=totals.__getitem__)]]


def test_vqa_prompts_describe_the_image_in_the_trained_layout_first(backbones):
    """The default VQA layout: the model's own caption after the processor's prompt, then the question."""
    from vlap.tasks import VQA_TEMPLATE, answer, caption, vqa_prompts

    model, processor = build(backbones, "llama")
    pictures, questions = images(2), ["what colour is it?", "is there a circle?"]
    captions = caption(model, processor, pictures, max_new_tokens=12)
    prompts = vqa_prompts(model, processor, pictures, questions, None, VQA_TEMPLATE, batch_size=1)
    for prompt, text, question in zip(prompts, captions, questions):
        assert f"{processor.prompt} {text.rstrip('.')}.\nQuestion: {question}\nAnswer:" in prompt
        assert prompt.endswith("Answer:")
    # Without {caption} nothing is generated first: the question is the whole prompt.
    assert vqa_prompts(model, processor, pictures, questions, None, PAPER_VQA_TEMPLATE, 2) == [
        f"Question: {q} Answer:" for q in questions
    ]
    # The tiny LLM's 128 positions hold the layout without the default's text example.
    short = "{prompt} {caption}. Q: {question} A:"
    prompts = vqa_prompts(model, processor, pictures, questions, None, short, batch_size=2)
    assert prompts == [f"{processor.prompt} {t.rstrip('.')}. Q: {q} A:" for t, q in zip(captions, questions)]
    direct = processor.batch_decode(
        model.generate(**processor(images=pictures, prompt=prompts), max_new_tokens=3), skip_special_tokens=True
    )
    assert answer(model, processor, pictures, questions, template=short, max_new_tokens=3) == [
        first_line(t) for t in direct
    ]
    for bad, named in [("{question} {colour}", "colour"), ("no field", "{question}")]:
        with pytest.raises(ValueError, match=re.escape(named)):
            vqa_prompts(model, processor, pictures, questions, None, bad, 2)
    with pytest.raises(ValueError, match="2 images but 1 questions"):
        answer(model, processor, pictures, questions[:1])


@pytest.mark.parametrize("llm", ["opt", "llama"])
def test_inputs_beyond_the_llms_positions_are_an_error_naming_the_limit(backbones, llm):
    model, processor = build(backbones, llm)
    limit = model.language_model.config.max_position_embeddings
    long_prompt = " ".join(["red"] * limit)
    with pytest.raises(ValueError, match=f"exceed the LLM's {limit} positions"):
        model.generate(**processor(images=images(1), prompt=long_prompt), max_new_tokens=2)
    with pytest.raises(ValueError, match=f"exceed the LLM's {limit} positions"):
        model(**processor(images=images(1), text=[long_prompt]))
    inputs = processor(images=images(1))
    visual = model.get_image_prefix(inputs["pixel_values"]).shape[1]
    room = limit - visual - inputs["prompt_input_ids"].shape[1]
    model.generate(**inputs, max_new_tokens=room)  # exactly up to the limit: fine
    with pytest.raises(ValueError, match=f"{limit + 1} tokens \\({visual} visual"):
        model.generate(**inputs, max_new_tokens=room + 1)


def test_training_on_a_separable_task_learns_what_it_was_taught(backbones):
    """A few steps of L_cap + L_map on coloured shapes teach the bridge their colours: on held-out images (a shape and
    sizes never trained on) zero-shot classification among the colour names goes from chance to well above it.
    (Tiny OPT: its byte-level pieces of the four colour names overlap least; the tiny Llama spells "yellow" in six
    one-letter pieces that the other names share.)"""
    from tiny import shape_image

    from vlap.data import caption_token_counts
    from vlap.tasks import classify

    model, processor = build(backbones, "opt", assignment_loss_weight=1.0, num_visual_tokens=4)
    colours = ["red", "green", "blue", "yellow"]
    train = [
        (shape_image(c, s, size), f"a {c} {s}") for c in colours for s in ("circle", "square") for size in (32, 40)
    ]
    held_out = [shape_image(c, "triangle", size) for c in colours for size in (30, 44)]
    truth = [c for c in colours for _ in range(2)]
    counts = caption_token_counts([t for _, t in train], processor, model.word_prior.numel())
    model.fit_word_prior(counts)

    def accuracy() -> float:
        model.eval()
        ranked = classify(model, processor, held_out, colours, method="feature")
        return sum(r[0][0] == c for r, c in zip(ranked, truth)) / len(truth)

    before = accuracy()
    batch = processor(images=[im for im, _ in train], text=[t for _, t in train])
    optimizer = torch.optim.AdamW(model.bridge.parameters(), lr=1e-2)
    model.train()
    for _ in range(80):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = accuracy()
    assert before <= 0.5 and after >= 0.75, (before, after)  # chance is 0.25


def bos_llama(backbones, folder):
    """The tiny Llama with a tokenizer that starts every text with <s>, as Llama's and Gemma's do."""
    import shutil

    from tiny import bpe_tokenizer
    from tokenizers import processors

    shutil.copytree(backbones["llama"], folder)
    tokenizer = bpe_tokenizer()
    bos = tokenizer.convert_tokens_to_ids("<s>")
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    tokenizer.save_pretrained(folder)
    return folder, bos


def test_llm_whose_tokenizer_starts_with_bos_reads_it_before_the_visual_prefix(backbones, tmp_path):
    from transformers import AutoTokenizer

    from modeling_vlap import VLAPProcessor
    from modeling_vlap.processing_vlap import leading_bos_token_id

    folder, bos = bos_llama(backbones, tmp_path / "bos-llama")
    assert leading_bos_token_id(AutoTokenizer.from_pretrained(folder)) == bos
    assert leading_bos_token_id(AutoTokenizer.from_pretrained(backbones["llama"])) is None
    assert leading_bos_token_id(AutoTokenizer.from_pretrained(backbones["t5"])) is None
    plain, _ = build(backbones, "llama")
    assert plain.config.prefix_bos_token_id is None  # its tokenizer adds no BOS: the layout is unchanged

    torch.manual_seed(0)
    model = VLAPForConditionalGeneration.from_vision_text_pretrained(str(backbones["clip"]), str(folder))
    assert model.config.prefix_bos_token_id == bos  # found from the LLM's tokenizer
    processor = VLAPProcessor.from_vision_text_pretrained(str(backbones["clip"]), str(folder))
    batch = processor(images=images(2), text=CAPTIONS[:2])
    embed = model.language_model.get_input_embeddings()
    with torch.no_grad():
        prefix = model.get_image_prefix(batch["pixel_values"])
        ids, mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
        expected = torch.cat([embed(torch.full((2, 1), bos)), prefix, embed(ids)], dim=1)
        manual = model.language_model.generate(
            inputs_embeds=expected,
            attention_mask=torch.ones(expected.shape[:2], dtype=torch.long),
            max_new_tokens=5,
            do_sample=False,
        )
        generated = model.generate(batch["pixel_values"], ids, mask, max_new_tokens=5, do_sample=False)
        # Training sees the same layout: the caption loss equals the LLM's on [BOS; prefix; prompt; caption].
        captions, caption_mask = batch["input_ids"], batch["attention_mask"]
        row = 0
        real = captions[row][caption_mask[row].bool()]
        inputs = torch.cat([expected[row : row + 1], embed(real[None])], dim=1)
        labels = torch.cat([torch.full((1, expected.shape[1]), -100), real[None]], dim=1)
        reference = model.language_model(inputs_embeds=inputs, labels=labels).loss
        single = {k: v[row : row + 1] for k, v in batch.items()}
        loss = model(**{**single, "attention_mask": single["attention_mask"]}).caption_loss
    assert torch.equal(generated, manual)
    torch.testing.assert_close(loss, reference, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="prefix_bos_token_id"):
        VLAPConfig(prefix_bos_token_id=-1)
    # A chat template that opens with BOS: that BOS is the one before the prefix, not a second one after it.
    template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour?"}]}]
    assert processor.apply_chat_template(chat, chat_template=template) == "what colour?\n"
    _, plain_processor = build(backbones, "llama")  # a tokenizer that adds no BOS: the template's text is kept
    assert plain_processor.apply_chat_template(chat, chat_template=template) == "<s>what colour?\n"


def test_a_model_saved_before_l_map_became_one_module_loads_and_saves_the_same(tmp_path):
    """tests/fixtures/saved_before_lmap_module: a tiny Llama VLAP saved by the code before `AssignmentPrediction`
    (word statistics at the top level of the state dict), its word prior fitted from counts (id % 5 + 1), with the
    losses and greedy ids that code gave (expected.json)."""
    from safetensors.torch import load_file

    from modeling_vlap import VLAPProcessor

    folder = REPO / "tests" / "fixtures" / "saved_before_lmap_module"
    model = VLAPForConditionalGeneration.from_pretrained(folder).eval()
    processor = VLAPProcessor.from_pretrained(folder)
    counts = torch.arange(model.word_prior.numel()).double() % 5 + 1
    prior = torch.softmax(counts / counts.max() / model.config.prior_temperature, dim=0)
    torch.testing.assert_close(model.word_prior, prior.float())
    torch.testing.assert_close(model.assignment_prediction.word_frequency, (counts / counts.sum()).float())

    expected = json.loads((folder / "expected.json").read_text())
    inputs = processor(images=[shape_image("red", "circle")], text=["a red circle"])
    with torch.no_grad():
        out = model(**inputs)
        ids = model.generate(pixel_values=inputs["pixel_values"], max_new_tokens=5, do_sample=False)
    assert out.assignment_loss.item() == pytest.approx(expected["assignment_loss"], rel=1e-5)
    assert out.caption_loss.item() == pytest.approx(expected["caption_loss"], rel=1e-5)
    assert ids.tolist() == expected["generated"]

    model.save_pretrained(tmp_path / "again")
    before, after = load_file(folder / "model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    assert set(after) == set(before)  # the same key names on disk ("word_prior", not "assignment_prediction....")
    assert all(torch.equal(after[key], before[key]) for key in before)


@pytest.mark.parametrize("llm", ["llama", "opt", "t5"])
def test_gradient_checkpointing_recomputes_the_frozen_llm_with_the_same_loss_and_gradient(backbones, llm):
    """`gradient_checkpointing_enable()` (the transformers call): every LLM layer runs again in the backward pass
    (counted on a submodule each layer calls), the loss and the bridge's gradient are those without it, and the
    frozen LLM stays in eval mode (no dropout switched on: OPT's layers apply dropout when training)."""
    model, processor = build(backbones, llm)
    model.train()
    batch = {**processor(images=images(2)), **processor(text=["a red circle", "a blue square"])}
    layers = [m for m in model.language_model.modules() if type(m).__name__.endswith(("DecoderLayer", "Block"))]
    calls = []
    first_linear = [next(m for m in layer.modules() if isinstance(m, torch.nn.Linear)) for layer in layers]
    hooks = [linear.register_forward_hook(lambda *_: calls.append(1)) for linear in first_linear]

    def loss_and_gradient():
        model.zero_grad()
        calls.clear()
        loss = model(**batch).loss
        loss.backward()
        return loss.detach(), model.bridge.weight.grad.clone(), len(calls)

    plain_loss, plain_grad, plain_calls = loss_and_gradient()
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing and not model.language_model.training
    loss, grad, checkpointed_calls = loss_and_gradient()
    assert checkpointed_calls == 2 * plain_calls > 0  # each layer's first projection again in the backward pass
    assert torch.allclose(loss, plain_loss, atol=1e-6) and torch.allclose(grad, plain_grad, atol=1e-6)
    model.gradient_checkpointing_disable()
    assert loss_and_gradient()[2] == plain_calls and not model.is_gradient_checkpointing
    for hook in hooks:
        hook.remove()


def test_bridge_only_folders_honour_the_loading_options_of_full_folders(backbones, tmp_path):
    """dtype, attn_implementation and device_map reach the backbone loads of a bridge-only folder: the loaded
    dtypes and attention implementations equal the full folder's, and both generate the same ids."""
    model, processor = build(backbones, "llama")
    with torch.no_grad():
        model.bridge.weight.normal_(std=0.5)
    model.save_pretrained(tmp_path / "full")
    model.save_pretrained(tmp_path / "bridge", bridge_only=True)
    inputs = processor(images=images(2))

    def described(folder, **options):
        loaded = VLAPForConditionalGeneration.from_pretrained(tmp_path / folder, **options)
        return {
            "dtypes": {name: next(getattr(loaded, name).parameters()).dtype for name in ("bridge", "vision_model")}
            | {"language_model": loaded.language_model.dtype},
            "attention": (
                loaded.vision_model.config._attn_implementation,
                loaded.language_model.config._attn_implementation,
            ),
            "ids": loaded.generate(**inputs, max_new_tokens=4, do_sample=False).tolist(),
        }

    for options in ({"dtype": torch.bfloat16}, {"attn_implementation": "eager"}, {"device_map": "cpu"}):
        full, bridge_only = described("full", **options), described("bridge", **options)
        assert bridge_only == full, options
    assert described("bridge", dtype=torch.bfloat16)["dtypes"]["language_model"] == torch.bfloat16
    assert described("bridge", attn_implementation="eager")["attention"] == ("eager", "eager")


@pytest.mark.parametrize("bridge", ["linear", "langbridge"])
def test_offloaded_model_generates_the_ids_of_one_device(backbones, tmp_path, bridge):
    """device_map with almost no memory (weights offloaded to disk, streamed in by accelerate's hooks): the same
    greedy ids as the model on one device. The bridge gets the LLM's word rows as a tensor, never its module."""
    from tiny import langbridge

    model, processor = langbridge(backbones) if bridge == "langbridge" else build(backbones, "llama")
    with torch.no_grad():
        for parameter in model.bridge.parameters():
            parameter.normal_(std=0.5)
    model.save_pretrained(tmp_path / "model")
    inputs = processor(images=images(2))
    expected = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    offloaded = VLAPForConditionalGeneration.from_pretrained(
        tmp_path / "model", device_map="auto", max_memory={"cpu": "60KB"}, offload_folder=str(tmp_path / "offload")
    )
    assert any(parameter.device.type == "meta" for parameter in offloaded.parameters())  # really offloaded
    assert torch.equal(offloaded.generate(**inputs, max_new_tokens=4, do_sample=False), expected)


def test_image_features_compile_as_one_graph(backbones):
    """torch.compile(fullgraph=True) captures the image-feature forward whole (Dynamo's eager backend: the capture,
    without code generation); the training forward's breaks are listed by bench/compile_breaks.py."""
    model, processor = build(backbones, "llama")
    pixel_values = processor(images=images(2))["pixel_values"]
    torch._dynamo.reset()
    compiled = torch.compile(model.get_image_features, fullgraph=True, backend="eager")
    assert torch.allclose(compiled(pixel_values=pixel_values), model.get_image_features(pixel_values), atol=1e-6)
