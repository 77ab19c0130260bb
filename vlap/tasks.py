"""The uses of a bridged model as a library: captioning, prompted VQA, retrieval, reading images as words and visual
semantic arithmetic. The `vlap` CLI and the evaluation are thin layers over these functions.

    from vlap.tasks import load, caption, answer
    model, processor = load("path/or/hub-id")
    caption(model, processor, ["cat.png"])           # ['a cat sitting on a sofa']
    answer(model, processor, ["cat.png"], ["What animal is this?"])

Every function takes `images` (PIL images or paths) or, instead, `vision_hidden_states`: the frozen vision output
of those images (`model.get_vision_hidden_states`), so one vision pass can serve several models or tasks.
"""

import io
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from modeling_vlap.pipeline_vlap import LABEL_TEMPLATE, label_texts, template_fields

# Zero-shot VQA layout. The bridge is trained on one layout only (visual prefix, the processor's prompt "A picture of",
# a caption, the end token), so a question put straight after the prefix meets what training made likely there: the
# end token (empty answers). Instead the image is first described in its trained layout ({prompt} {caption}: the
# model's own caption) and the question follows the description; a one-line text example before it fixes the answer
# format (one word, then a new line). Fields: {question} (required), {caption}, {prompt}. Chosen on a validation
# slice of easy-vqa train among five layouts (docs/results.md, "Zero-shot VQA").
FORMAT_EXAMPLE = "{prompt} a purple star.\nQuestion: What shape is in the image?\nAnswer: star\n"
VQA_TEMPLATE = FORMAT_EXAMPLE + "{prompt} {caption}.\nQuestion: {question}\nAnswer:"
PAPER_VQA_TEMPLATE = "Question: {question} Answer:"  # the paper's layout, no description


def load(model_name_or_path: str, device: str = "auto", **config_overrides):
    """A saved VLAP model (local folder or Hub id), in eval mode on `device`, and its processor, through the Auto
    classes: the one loader of the CLI, the web demo, the evaluations and the experiments. The installed
    `modeling_vlap` code is used; the .py files a folder holds are never run (`trust_remote_code=False`).

    `device="auto"` is CUDA when available, else the CPU. `config_overrides` are VLAPConfig fields applied at load
    (e.g. `text_representation=...` for a caption-only run, whose training never read it).

    Example:
        >>> model, processor = load("outputs/demo/vlap/final")  # doctest: +SKIP
    """
    from transformers import AutoModel, AutoProcessor

    path = Path(model_name_or_path)
    if path.is_dir() and not (path / "config.json").exists():
        raise ValueError(f"{model_name_or_path}: the folder has no config.json (not a saved VLAP model)")
    if not path.exists() and (model_name_or_path.startswith((".", "/", "~")) or model_name_or_path.count("/") > 1):
        raise ValueError(f"{model_name_or_path}: no such folder (and not a Hub id of the form user/name)")
    device = resolve_device(device)
    model = AutoModel.from_pretrained(model_name_or_path, trust_remote_code=False, **config_overrides)
    processor = AutoProcessor.from_pretrained(model_name_or_path, trust_remote_code=False)
    return model.to(device).eval(), processor


def resolve_device(device: str):
    """ "auto" (CUDA when available, else the CPU) or a torch device string, checked against this machine before any
    model loads: a ValueError for a name torch does not know or a device that is not there."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r}: not a torch device (cpu, cuda, cuda:1, mps, ...)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available on this machine (use cpu)")
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine (use cpu)")
    if resolved.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r}: use cpu, cuda or mps")
    return resolved


def first_line(text: str) -> str:
    """The first non-empty line of a generation, stripped (chat LLMs often continue past the answer)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def _count(images, vision_hidden_states) -> int:
    return len(vision_hidden_states) if vision_hidden_states is not None else len(images)


def _batches(
    model, processor, images, vision_hidden_states, batch_size: int, progress: bool = False
) -> Iterator[tuple[slice, dict]]:
    """(rows, vision inputs) per batch: `pixel_values` from `images`, or slices of `vision_hidden_states`."""
    count = _count(images, vision_hidden_states)
    starts = range(0, count, batch_size)
    for start in tqdm(starts, disable=not progress or len(starts) < 2, unit="batch", leave=False):
        rows = slice(start, min(start + batch_size, count))
        if vision_hidden_states is not None:
            inputs = {"vision_hidden_states": vision_hidden_states[rows].to(model.device)}
        else:
            pixel_values = processor(images=list(images[rows]))["pixel_values"]
            inputs = {"pixel_values": pixel_values.to(model.device, model.dtype)}
        yield rows, inputs


def _generate(model, processor, images, vision_hidden_states, prompts, batch_size, progress, **generation) -> list[str]:
    texts = []
    for rows, inputs in _batches(model, processor, images, vision_hidden_states, batch_size, progress):
        prompt = processor.prompt_inputs(rows.stop - rows.start, prompts[rows] if prompts is not None else None)
        ids = model.generate(**inputs, **prompt.to(model.device), **generation)
        texts += [first_line(text) for text in processor.batch_decode(ids, skip_special_tokens=True)]
    return texts


@torch.no_grad()
def caption(
    model,
    processor,
    images=None,
    *,
    vision_hidden_states=None,
    prompt: str | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 20,
    progress: bool = False,
    **generation,
) -> list[str]:
    """One caption per image, after `prompt` (default: the processor's, "A picture of")."""
    count = _count(images, vision_hidden_states)
    prompts = None if prompt is None else [prompt] * count
    return _generate(
        model,
        processor,
        images,
        vision_hidden_states,
        prompts,
        batch_size,
        progress,
        max_new_tokens=max_new_tokens,
        **generation,
    )


def vqa_prompts(model, processor, images, questions, vision_hidden_states, template: str, batch_size: int) -> list[str]:
    """`template` filled for every (image, question): {question}, {prompt} (the processor's caption prompt) and, when
    the template has it, {caption}: the model's caption of the image."""
    count = _count(images, vision_hidden_states)
    if len(questions) != count:
        raise ValueError(f"got {count} images but {len(questions)} questions")
    unknown = set(template_fields(template, "VQA template")) - {"question", "caption", "prompt"}
    if "{question}" not in template or unknown:
        raise ValueError(
            f"the VQA template {template!r} needs a {{question}} field and may also use {{caption}} and "
            f"{{prompt}} (unknown: {', '.join(sorted(unknown)) or 'none'})"
        )
    captions = [""] * count
    if "{caption}" in template:
        captions = [
            text.rstrip(".")
            for text in caption(
                model,
                processor,
                images,
                vision_hidden_states=vision_hidden_states,
                batch_size=batch_size,
                max_new_tokens=12,
            )
        ]
    return [template.format(question=q, caption=c, prompt=processor.prompt) for q, c in zip(questions, captions)]


@torch.no_grad()
def answer(
    model,
    processor,
    images=None,
    questions: Sequence[str] = (),
    *,
    vision_hidden_states=None,
    template: str = VQA_TEMPLATE,
    batch_size: int = 16,
    max_new_tokens: int = 10,
    progress: bool = False,
    **generation,
) -> list[str]:
    """Zero-shot VQA: one answer per (image, question) pair, the question put into `template` as the prompt (see
    VQA_TEMPLATE: by default the model first captions the image, and the question follows that description)."""
    prompts = vqa_prompts(model, processor, images, questions, vision_hidden_states, template, batch_size)
    return _generate(
        model,
        processor,
        images,
        vision_hidden_states,
        prompts,
        batch_size,
        progress,
        max_new_tokens=max_new_tokens,
        **generation,
    )


@torch.no_grad()
def choose_answer(
    model,
    processor,
    images=None,
    questions: Sequence[str] = (),
    candidates: Sequence[str] = (),
    *,
    vision_hidden_states=None,
    template: str = VQA_TEMPLATE,
    batch_size: int = 64,
    progress: bool = False,
) -> list[str]:
    """Closed-set VQA: for each (image, question) the candidate answer the LLM finds most likely after the visual
    prefix and the question, log p(answer + end token | image, prompt) (rank classification over a known answer set,
    e.g. a dataset's answer vocabulary)."""
    if not candidates:
        raise ValueError("choose_answer needs at least one candidate answer")
    candidates = list(candidates)
    filled = vqa_prompts(model, processor, images, questions, vision_hidden_states, template, batch_size)
    chosen = []
    for rows, inputs in _batches(
        model, processor, images, vision_hidden_states, max(batch_size // len(candidates), 1), progress
    ):
        states = inputs.get("vision_hidden_states")
        if states is None:
            states = model.get_vision_hidden_states(inputs["pixel_values"])
        prompts = [prompt for prompt in filled[rows] for _ in candidates]
        answers = processor.answer_inputs(candidates * (rows.stop - rows.start), prompts[0])  # all prompts end alike
        answers.update(processor.prompt_inputs(len(prompts), prompts))
        scores = model.caption_log_likelihood(
            vision_hidden_states=states.repeat_interleave(len(candidates), dim=0), **answers.to(model.device)
        )
        chosen += [candidates[i] for i in scores.view(-1, len(candidates)).argmax(dim=1).tolist()]
    return chosen


@torch.no_grad()
def vision_hidden_states_of(model, processor, images, batch_size: int = 16) -> torch.Tensor:
    """The frozen vision output of `images`, computed once to pass as `vision_hidden_states` to several tasks."""
    batches = _batches(model, processor, images, None, batch_size)
    return torch.cat([model.get_vision_hidden_states(inputs["pixel_values"]).cpu() for _, inputs in batches])


@torch.no_grad()
def image_features(model, processor, images=None, *, vision_hidden_states=None, batch_size: int = 16) -> torch.Tensor:
    """`[N, D]` L2-normalised image features (mean of the mapped visual tokens)."""
    batches = _batches(model, processor, images, vision_hidden_states, batch_size)
    return torch.cat([model.get_image_features(**inputs).cpu() for _, inputs in batches])


@torch.no_grad()
def text_features(model, processor, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """`[N, D]` L2-normalised text features (mean of the frozen LLM's states), comparable with image features."""
    features = []
    for start in range(0, len(texts), batch_size):
        tokens = processor(text=list(texts[start : start + batch_size])).to(model.device)
        features.append(model.get_text_features(tokens["input_ids"], tokens["attention_mask"]).cpu())
    return torch.cat(features)


SCORE_METHODS = ("feature", "code")


@torch.no_grad()
def classify(
    model,
    processor,
    images=None,
    labels: Sequence[str] = (),
    *,
    vision_hidden_states=None,
    template: str = LABEL_TEMPLATE,
    method: str = "code",
    batch_size: int = 16,
) -> list[list[tuple[str, float]]]:
    """Zero-shot classification: each image's labels, best first, with scores (a softmax over the labels) from

    - "code": VLAP's word space: sum over words of the label text's assignment target times the log of the image's
      predicted assignment (the swapped-prediction score training maximises for matching pairs): the numbers of
      `pipeline("zero-shot-image-classification", hypothesis_template=template)` on the saved model;
    - "feature": cos(image feature, label text feature) / temperature, CLIP-style.
    """
    labels = list(labels)
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise ValueError(f"give at least two distinct labels, got {labels}")
    texts = label_texts(template, labels)
    image = image_features(model, processor, images, vision_hidden_states=vision_hidden_states, batch_size=batch_size)
    logits = image_text_scores(model, processor, image, texts, method)
    if method == "feature":
        logits = logits / model.config.assignment_temperature
    return [[(labels[i], p) for i, p in ranked] for ranked in rank(torch.softmax(logits, dim=-1), len(labels))]


@torch.no_grad()
def image_text_scores(
    model, processor, image: torch.Tensor, texts: Sequence[str], method="code", batch_size: int = 64
) -> torch.Tensor:
    """`[images, texts]` how well each text describes each image, from image features `image` `[N, D]`
    (`image_features`), higher is better, by

    - "code": VLAP's word space (`model.code_scores`): the sum over words of the text's assignment target times the
      log of the image's predicted assignment, the score training raises for matching pairs (and the zero-shot
      pipeline's); on easy-vqa it retrieves the right class far more often than the cosine;
    - "feature": the cosine of the pooled image and text features, CLIP-style (texts encoded `batch_size` at a time).
    """
    if method not in SCORE_METHODS:
        raise ValueError(f"method {method!r} is not one of {', '.join(SCORE_METHODS)}")
    if method == "feature":
        return image @ text_features(model, processor, texts, batch_size).T
    tokens = processor(text=list(texts)).to(model.device)
    return model.code_scores(image.to(model.device), tokens["input_ids"], tokens["attention_mask"]).cpu()


def rank(similarity: torch.Tensor, top_k: int) -> list[list[tuple[int, float]]]:
    """Each row's `top_k` columns, best first, with their scores."""
    scores, indices = similarity.topk(min(top_k, similarity.shape[1]), dim=1)
    return [list(zip(row_indices.tolist(), row_scores.tolist())) for row_indices, row_scores in zip(indices, scores)]


@torch.no_grad()
def read_words(model, processor, images=None, *, vision_hidden_states=None, top_k: int = 10, batch_size: int = 16):
    """Each image as words: the top-k of its assignment over the vocabulary, `[[(word, weight), ...], ...]` (a word
    bridge: of its words' probabilities)."""
    words = []
    for _, inputs in _batches(model, processor, images, vision_hidden_states, batch_size):
        weights, ids = model.image_to_words(**inputs, top_k=top_k)
        if model.config.bridge_type == "words":
            said = [[model.config.word_bridge_words[i] for i in row] for row in ids.tolist()]
        else:
            said = processor.decode_words(ids)
        words += [list(zip(row, w.tolist())) for row, w in zip(said, weights)]
    return words


@torch.no_grad()
def token_words(model, processor, images=None, *, vision_hidden_states=None, top_k: int = 5, batch_size: int = 16):
    """LangBridge: what each visual token says, `[[[(word, coefficient), ...] per visual token] per image]`: the top-k
    of the bridge's coefficients over its vocabulary (`model.get_word_coefficients`), words this LLM lacks left out."""
    words = model.config.langbridge_tokens or []
    result = []
    for _, inputs in _batches(model, processor, images, vision_hidden_states, batch_size):
        coefficients = model.get_word_coefficients(**inputs).float()
        present = model.bridge.present.to(coefficients.device)
        top = coefficients.masked_fill(~present, float("-inf")).topk(min(top_k, int(present.sum())), dim=-1)
        result += [
            [
                [(words[i], value) for i, value in zip(ids.tolist(), values.tolist())]
                for ids, values in zip(image_ids, image_values)
            ]
            for image_ids, image_values in zip(top.indices, top.values)
        ]
    return result


def word_ids(processor, word: str) -> list[int]:
    """Token ids of `word` as it appears inside a sentence (after a space), without whitespace-only pieces."""
    tokenizer = processor.tokenizer
    ids = tokenizer(" " + word.strip(), add_special_tokens=False)["input_ids"]
    ids = [i for i in ids if tokenizer.decode([i]).strip()]
    if not word.strip() or not ids:
        raise ValueError(f"{word!r} is not a word the LLM's tokenizer can spell")
    return ids


def word_vector(model, processor, word: str) -> torch.Tensor:
    """`[D]` unit vector of a word in the LLM's input-embedding space: the mean of its normalised token embeddings."""
    embeddings = model.word_embeddings.detach().float()[word_ids(processor, word)]
    return F.normalize(F.normalize(embeddings, dim=-1).mean(dim=0), dim=0).cpu()


@torch.no_grad()
def arithmetic(
    model,
    processor,
    image,
    terms: Sequence[tuple[str, str]],
    *,
    top_k: int = 10,
    images: Sequence = (),
    candidate_features: torch.Tensor | None = None,
) -> dict:
    """Visual semantic arithmetic in the word-embedding space: image feature (+|-) word vectors, term by term.

    `terms` are `("+" | "-", word)` pairs, applied to the unit image feature with unit word vectors. Returns the
    nearest words by cosine over the whole vocabulary (special tokens and the operands' own tokens left out, as in
    word-analogy evaluation) and, when `images` are given, the nearest of those images (or pass their
    `candidate_features`, `image_features` of them computed once, to rank a fixed gallery without re-encoding it).
    """
    if not terms:
        raise ValueError("arithmetic needs at least one '+ word' or '- word' term")
    vector = image_features(model, processor, [image])[0]
    excluded = set(processor.tokenizer.all_special_ids)
    for sign, word in terms:
        if sign not in "+-" or len(sign) != 1:
            raise ValueError(f"expected '+' or '-' before {word!r}, got {sign!r}")
        vector = vector + (1 if sign == "+" else -1) * word_vector(model, processor, word)
        excluded.update(word_ids(processor, word))
    similarity = model.word_codes(vector.unsqueeze(0).to(model.device)).cpu()
    similarity[:, sorted(i for i in excluded if i < similarity.shape[1])] = float("-inf")
    nearest = rank(similarity, top_k)[0]
    words = processor.decode_words([[index for index, _ in nearest]])[0]
    result = {"words": [(word, score) for word, (_, score) in zip(words, nearest)]}
    if candidate_features is None and len(images):
        candidate_features = image_features(model, processor, images)
    if candidate_features is not None:
        result["images"] = rank(F.normalize(vector, dim=0).unsqueeze(0) @ candidate_features.T, top_k)[0]
    return result


def plot_words(words: Sequence[tuple[str, float]], title: str, path) -> None:
    """A horizontal bar chart of an image's top words (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    labels = [word if word.isprintable() else repr(word) for word, _ in words]  # byte-level pieces can be control bytes
    axis.barh(labels[::-1], [p for _, p in words][::-1])
    axis.set_xlabel("weight in the image's assignment over the vocabulary")
    axis.set_title(title)
    save_figure(figure, path, dpi=120)


def save_figure(figure, path, dpi: int = 110) -> None:
    """A matplotlib figure as a PNG at `path`, then closed. Rendered first, then written: a write error (a full
    disk) is raised, not swallowed by matplotlib."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    Path(path).write_bytes(buffer.getvalue())
