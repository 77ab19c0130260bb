"""Reproducible evaluation of a bridged model: captioning, zero-shot VQA and image-text retrieval.

Data comes from the sources the trainer reads (imagefolder, jsonl/csv, save_to_disk, Hub, webdataset); metrics are
our `evaluate` modules (vlap/metric_modules) through evaluate's `compute()`.

- caption, retrieval: an image column and a caption column (a string or a list of reference captions per image).
- vqa: `question` + `answers` (list of human answers) or `answer`, one question per row; or `questions` + `answers`,
  a list of questions per image with one answer (or a list of answers) per question.
- classification: an image column and a label column (a class index or name; the names come from `labels` or from a
  `datasets.ClassLabel` feature).
"""

import re
from itertools import islice

import datasets
import torch

from vlap import tasks
from vlap.data import caption_list, decode_image, load_source, undecoded_images
from vlap.metrics import load_metric

TASKS = ("caption", "vqa", "retrieval", "classification")


def load_eval_data(
    source: str,
    task: str,
    data_format: str = "auto",
    split: str | None = None,
    image_column: str = "image",
    caption_column: str = "caption",
    limit: int | None = None,
    label_column: str = "label",
    labels: list[str] | None = None,
) -> dict:
    """Readable images and their references: {"images", "references" | "questions" | "labels" + "class_names",
    "skipped"}.

    `split` defaults to "test", or "train" when the source has no test split (a plain image folder, a jsonl file).
    Unreadable images are skipped and counted; missing columns and empty data are errors naming the source.
    """
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {', '.join(TASKS)}")
    try:
        dataset, base_dir = load_source(source, data_format, split or "test")
    except (ValueError, KeyError):
        if split is not None:
            raise
        dataset, base_dir = load_source(source, data_format, "train")
    dataset = undecoded_images(dataset, image_column)
    needed = [image_column] + {"vqa": [], "classification": [label_column]}.get(task, [caption_column])
    if task == "classification":
        class_names = _class_names(dataset, label_column, labels, source)
    images, references, questions, skipped = [], [], [], 0
    for index, row in enumerate(islice(dataset, limit)):
        missing = [column for column in needed if column not in row]
        if missing:
            raise ValueError(f"{source}: no column {missing[0]!r} (columns: {', '.join(row)})")
        image = decode_image(row[image_column], base_dir)
        if image is None:
            skipped += 1
            continue
        if task == "vqa":
            pairs = _questions_of(row, source, index)
            questions += [(len(images), question, answers) for question, answers in pairs]
        elif task == "classification":
            references.append(_label_index(row[label_column], class_names, source, index))
        else:
            captions = caption_list(row[caption_column])
            if not captions:
                raise ValueError(f"{source}: row {index} has no non-empty caption in column {caption_column!r}")
            references.append(captions)
        images.append(image)
    if not images:
        raise ValueError(f"{source}: no readable images ({skipped} unreadable)")
    data = {"images": images, "skipped": skipped}
    if task == "vqa":
        data["questions"] = questions
    elif task == "classification":
        data.update(labels=references, class_names=class_names)
    else:
        data["references"] = references
    return data


def _class_names(dataset, label_column: str, labels: list[str] | None, source: str) -> list[str]:
    """The class names: given, or those of the label column's `datasets.ClassLabel` feature."""
    if labels:
        if len(set(labels)) != len(labels) or len(labels) < 2:
            raise ValueError(f"give at least two distinct class names, got {labels}")
        return list(labels)
    feature = (getattr(dataset, "features", None) or {}).get(label_column)
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    raise ValueError(
        f"{source}: the {label_column!r} column has no class names (not a datasets.ClassLabel): give them with --labels"
    )


def _label_index(value, class_names: list[str], source: str, index: int) -> int:
    if isinstance(value, str) and value in class_names:
        return class_names.index(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(class_names):
        return value
    raise ValueError(
        f"{source}: row {index} has label {value!r}, not one of the {len(class_names)} classes "
        f"({', '.join(class_names)}) nor an index of one"
    )


def _questions_of(row: dict, source: str, index: int) -> list[tuple[str, list[str]]]:
    """A row's (question, reference answers) pairs, for both VQA layouts."""

    def answer_list(value) -> list[str]:
        answers = caption_list(value)
        if not answers:
            raise ValueError(f"{source}: row {index} has a question without an answer")
        return answers

    if "question" in row:
        return [(row["question"], answer_list(row["answers"] if "answers" in row else row.get("answer")))]
    if "questions" in row and "answers" in row:
        if len(row["questions"]) != len(row["answers"]):
            raise ValueError(
                f"{source}: row {index} has {len(row['questions'])} questions but {len(row['answers'])} answers"
            )
        return [(question, answer_list(answers)) for question, answers in zip(row["questions"], row["answers"])]
    raise ValueError(f"{source}: VQA data needs 'question' + 'answers'/'answer' or 'questions' + 'answers' columns")


def evaluate_captioning(model, processor, images=None, references=(), *, vision_hidden_states=None, **kwargs) -> dict:
    """Caption every image and score against its references (BLEU-1..4, METEOR, ROUGE-L, CIDEr)."""
    captions = tasks.caption(model, processor, images, vision_hidden_states=vision_hidden_states, **kwargs)
    scores = load_metric("caption_metrics").compute(predictions=captions, references=[list(r) for r in references])
    unavailable = scores.pop("unavailable")
    examples = [{"caption": c, "references": list(r)} for c, r in zip(captions[:5], references[:5])]
    return {"scores": scores, "unavailable": unavailable, "predictions": captions, "examples": examples}


def evaluate_vqa(model, processor, images=None, questions=(), *, vision_hidden_states=None, **kwargs) -> dict:
    """Answer every (image row, question, answers) triple zero-shot and score with VQAv2 accuracy."""
    rows = [row for row, _, _ in questions]
    if vision_hidden_states is not None:
        vision_hidden_states, images = vision_hidden_states[rows], None
    else:
        images = [images[row] for row in rows]
    predicted = tasks.answer(
        model, processor, images, [q for _, q, _ in questions], vision_hidden_states=vision_hidden_states, **kwargs
    )
    answers = [list(a) for _, _, a in questions]
    score = load_metric("vqa_accuracy").compute(predictions=predicted, references=answers)
    examples = [{"question": q, "answers": list(a), "predicted": p} for (_, q, a), p in zip(questions[:8], predicted)]
    return {"scores": score, "predictions": predicted, "examples": examples}


# How retrieval figures are keyed in reports: by the feature cosine as before, and "_code" for VLAP's word space.
RETRIEVAL_SCORINGS = (("feature", ""), ("code", "_code"))


def evaluate_retrieval(
    model, processor, images=None, references=(), *, vision_hidden_states=None, batch_size=16
) -> dict:
    """Rank all reference captions for each image and all images for each caption: R@1/5/10 both ways, by the feature
    cosine and (keys ending "_code") in VLAP's word space."""
    features = tasks.image_features(
        model, processor, images, vision_hidden_states=vision_hidden_states, batch_size=batch_size
    )
    texts = [text for captions in references for text in captions]
    owned, start = [], 0
    for captions in references:
        owned.append(list(range(start, start + len(captions))))
        start += len(captions)
    scores = {}
    for method, suffix in RETRIEVAL_SCORINGS:
        similarity = tasks.image_text_scores(model, processor, features, texts, method)
        recall = load_metric("retrieval_recall").compute(predictions=similarity.tolist(), references=owned)
        scores.update({f"{k}{suffix}": v for k, v in recall.items()})
    return {"scores": scores}


def evaluate_task(
    model, processor, data: dict, task: str, batch_size: int = 16, progress: bool = False, **generation
) -> dict:
    """Run one task on `load_eval_data` output; `generation` (max_new_tokens, ...) goes to generate."""
    if task == "caption":
        return evaluate_captioning(
            model, processor, data["images"], data["references"], batch_size=batch_size, progress=progress, **generation
        )
    if task == "vqa":
        return evaluate_vqa(
            model, processor, data["images"], data["questions"], batch_size=batch_size, progress=progress, **generation
        )
    if task == "classification":
        return evaluate_classification(
            model, processor, data["images"], data["labels"], data["class_names"], batch_size=batch_size, **generation
        )
    return evaluate_retrieval(model, processor, data["images"], data["references"], batch_size=batch_size)


def named_class(caption: str, class_names) -> int | None:
    """The class a caption names first (whole words, case-insensitive, plural allowed; "shirt" is not named by
    "t-shirt"), or None when it names none. At one position the longer name wins ("ankle boot" over "boot")."""
    found = []
    for k, name in enumerate(class_names):
        match = re.search(rf"(?<![\w-]){re.escape(name.lower())}(?:e?s)?(?![\w-])", caption.lower())
        if match:
            found.append((match.start(), -len(name), k))
    return min(found)[2] if found else None


def _accuracy_by_class(predicted: list, truth: list[int], class_names, prefix: str) -> tuple[dict, list]:
    """Scores (`{prefix}`: accuracy; `{prefix}_{name}`: per class) and the confusion matrix: rows true class, columns
    predicted (a last "none" column when a prediction can be None)."""
    columns = len(class_names) + any(p is None for p in predicted)
    confusion = torch.zeros(len(class_names), columns, dtype=torch.long)
    for p, t in zip(predicted, truth):
        confusion[t, len(class_names) if p is None else p] += 1
    scores = {prefix: sum(p == t for p, t in zip(predicted, truth)) / len(truth)}
    for k, name in enumerate(class_names):
        if confusion[k].sum() > 0:
            scores[f"{prefix}_{name}"] = (confusion[k, k] / confusion[k].sum()).item()
    return scores, confusion.tolist()


@torch.no_grad()
def evaluate_classification(
    model,
    processor,
    images=None,
    labels=(),
    class_names=(),
    *,
    vision_hidden_states=None,
    held_out=(),
    template: str = tasks.LABEL_TEMPLATE,
    batch_size: int = 16,
    max_new_tokens: int = 12,
) -> dict:
    """Images of known class (`labels`: indices into `class_names`), two ways:

    - classification: zero-shot among all the class names by feature cosine (`tasks.classify(method="feature")`,
      `template`); classification_code: the same choice in VLAP's word space, as
      `pipeline("zero-shot-image-classification")` makes it (`tasks.classify`); per class, and the confusion matrices;
    - caption: the model's caption names the right class first (`named_class`); per class, confusion with "none".

    Returns {"scores", "confusion": {one per figure above} (rows true, columns predicted),
    "class_names", "predictions" (the captions), "examples"}; `plot_confusion` draws the matrices.

    `held_out` (class names left out of training) adds both figures on the held-out and on the seen images, and
    `held_out_classification_among_held_out`: the held-out images classified among the held-out names only.
    """
    truth = list(labels)
    if vision_hidden_states is None:  # one vision pass serves every figure below
        vision_hidden_states = tasks.vision_hidden_states_of(model, processor, images, batch_size)
    shared = {"vision_hidden_states": vision_hidden_states, "batch_size": batch_size}
    predicted = {}
    for method in tasks.SCORE_METHODS:
        ranked = tasks.classify(model, processor, labels=class_names, template=template, method=method, **shared)
        name = "classification" if method == "feature" else f"classification_{method}"
        predicted[name] = [list(class_names).index(r[0][0]) for r in ranked]
    captions = tasks.caption(model, processor, max_new_tokens=max_new_tokens, **shared)
    predicted["caption_names_class"] = [named_class(caption, class_names) for caption in captions]
    scores, confusion = {}, {}
    for name, guesses in predicted.items():
        figures, confusion[name] = _accuracy_by_class(guesses, truth, class_names, name)
        scores.update(figures)
    if held_out:
        unknown = [name for name in held_out if name not in class_names]
        if unknown:
            raise ValueError(f"held-out classes {unknown} are not among the class names {list(class_names)}")
        held = {list(class_names).index(name) for name in held_out}
        rows = [i for i, t in enumerate(truth) if t in held]
        for group, members in (("held_out", rows), ("seen", [i for i, t in enumerate(truth) if t not in held])):
            for name, guesses in predicted.items():
                scores[f"{group}_{name}"] = sum(guesses[i] == truth[i] for i in members) / max(len(members), 1)
        if rows and len(held) > 1:
            for method in tasks.SCORE_METHODS:
                among = tasks.classify(
                    model,
                    processor,
                    labels=list(held_out),
                    template=template,
                    method=method,
                    vision_hidden_states=vision_hidden_states[rows],
                    batch_size=batch_size,
                )
                suffix = "" if method == "feature" else f"_{method}"
                scores[f"held_out_classification{suffix}_among_held_out"] = sum(
                    r[0][0] == class_names[truth[i]] for r, i in zip(among, rows)
                ) / len(rows)
    return {
        "scores": scores,
        "confusion": confusion,
        "class_names": list(class_names),
        "predictions": captions,
        "examples": [{"caption": c, "class": class_names[t]} for c, t in zip(captions[:8], truth[:8])],
    }


def markdown_table(columns: dict[str, dict]) -> str:
    """`{column name: {metric: value}}` -> a markdown table, one row per metric (missing cells: "unavailable")."""
    metrics = list(dict.fromkeys(metric for scores in columns.values() for metric in scores))
    lines = ["| metric | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for metric in metrics:
        cells = [f"{scores[metric]:.3f}" if metric in scores else "unavailable" for scores in columns.values()]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


NO_IMAGE_TEMPLATE = tasks.FORMAT_EXAMPLE + "Question: {question}\nAnswer:"


@torch.no_grad()
def answer_without_image(
    model,
    processor,
    questions: list[str],
    descriptions: list[str] | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 4,
    template: str = tasks.VQA_TEMPLATE,
) -> list[str]:
    """The bare frozen LLM's answers, no visual prefix. Without `descriptions`: to the question alone (what the text
    alone makes likely). With them (e.g. each image's true caption): to `template` (a VQA layout) with that
    description in place of the model's caption, i.e. how well the LLM answers from a perfect caption."""
    from modeling_vlap.modeling_vlap import pack_padding

    if descriptions is None:
        texts = [NO_IMAGE_TEMPLATE.format(question=q, prompt=processor.prompt) for q in questions]
    else:
        texts = [
            template.format(question=q, caption=c, prompt=processor.prompt) for q, c in zip(questions, descriptions)
        ]
    tokenizer, answers = processor.tokenizer, []
    for start in range(0, len(questions), batch_size):
        prompts = texts[start : start + batch_size]
        inputs = processor.prompt_inputs(len(prompts), prompts)
        ids, mask = inputs["prompt_input_ids"].to(model.device), inputs["prompt_attention_mask"].to(model.device)
        no_image = torch.zeros(len(prompts), 0, model.config.projection_dim, dtype=model.dtype, device=model.device)
        embeds, mask = model.prefix_and_prompt_embeds(no_image, ids, mask)  # the model's layout (its BOS), no image
        side = "right" if model.is_encoder_decoder_llm else "left"
        mask, embeds = pack_padding(mask, embeds, padding_side=side)
        out = model.language_model.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            do_sample=False,
        )
        answers += [tasks.first_line(text) for text in tokenizer.batch_decode(out, skip_special_tokens=True)]
    return answers


def plot_confusion(result: dict, path) -> None:
    """The confusion matrices of `evaluate_classification` side by side, as a PNG (rendered, then written)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = result["class_names"]
    rows = (len(result["confusion"]) + 1) // 2
    figure, axes = plt.subplots(rows, 2, figsize=(14, 6 * rows), squeeze=False)
    for axis in axes.flatten()[len(result["confusion"]) :]:
        axis.axis("off")
    for axis, (kind, matrix) in zip(axes.flatten(), result["confusion"].items()):
        counts = torch.tensor(matrix, dtype=torch.float)
        shares = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
        axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        columns = names + ["none"] * (counts.shape[1] - len(names))
        axis.set_xticks(range(len(columns)), columns, rotation=60, ha="right", fontsize=8)
        axis.set_yticks(range(len(names)), names, fontsize=8)
        for row, column in counts.nonzero().tolist():
            value = shares[row, column].item()
            axis.text(
                column,
                row,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=6,
                color="white" if value > 0.5 else "black",
            )
        accuracy = result["scores"].get(kind)
        axis.set(
            xlabel="predicted",
            ylabel="true class",
            title=f"{kind}" + (f" (accuracy {accuracy:.3f})" if accuracy is not None else ""),
        )
    tasks.save_figure(figure, path)
