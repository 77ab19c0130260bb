"""Reproducible evaluation of a bridged model: captioning, zero-shot VQA and image-text retrieval.

Data comes from the sources the trainer reads (imagefolder, jsonl/csv, save_to_disk, Hub, webdataset); metrics are
our `evaluate` modules (vlap/metric_modules) through evaluate's `compute()`.

- caption, retrieval: an image column and a caption column (a string or a list of reference captions per image).
- vqa: `question` + `answers` (list of human answers) or `answer`, one question per row; or `questions` + `answers`,
  a list of questions per image with one answer (or a list of answers) per question.
"""

from itertools import islice

from vlap import tasks
from vlap.data import caption_list, decode_image, load_source, undecoded_images
from vlap.metrics import load_metric

TASKS = ("caption", "vqa", "retrieval")


def load_eval_data(
    source: str, task: str, data_format: str = "auto", split: str | None = None, image_column: str = "image",
    caption_column: str = "caption", limit: int | None = None,
) -> dict:  # fmt: skip
    """Readable images and their references: {"images", "references" | "questions", "skipped"}.

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
    needed = [image_column] + ([caption_column] if task != "vqa" else [])
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
        else:
            captions = caption_list(row[caption_column])
            if not captions:
                raise ValueError(f"{source}: row {index} has no non-empty caption in column {caption_column!r}")
            references.append(captions)
        images.append(image)
    if not images:
        raise ValueError(f"{source}: no readable images ({skipped} unreadable)")
    data = {"images": images, "skipped": skipped}
    data.update({"questions": questions} if task == "vqa" else {"references": references})
    return data


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
            raise ValueError(f"{source}: row {index} has {len(row['questions'])} questions but {len(row['answers'])} answers")
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
    predicted = tasks.answer(model, processor, images, [q for _, q, _ in questions],
                             vision_hidden_states=vision_hidden_states, **kwargs)  # fmt: skip
    answers = [list(a) for _, _, a in questions]
    score = load_metric("vqa_accuracy").compute(predictions=predicted, references=answers)
    examples = [{"question": q, "answers": list(a), "predicted": p} for (_, q, a), p in zip(questions[:8], predicted)]
    return {"scores": score, "predictions": predicted, "examples": examples}


def evaluate_retrieval(model, processor, images=None, references=(), *, vision_hidden_states=None, batch_size=16) -> dict:
    """Rank all reference captions for each image and all images for each caption: R@1/5/10 both ways."""
    features = tasks.image_features(model, processor, images, vision_hidden_states=vision_hidden_states,
                                    batch_size=batch_size)  # fmt: skip
    texts = [text for captions in references for text in captions]
    owned, start = [], 0
    for captions in references:
        owned.append(list(range(start, start + len(captions))))
        start += len(captions)
    similarity = features @ tasks.text_features(model, processor, texts).T
    scores = load_metric("retrieval_recall").compute(predictions=similarity.tolist(), references=owned)
    return {"scores": scores}


def evaluate_task(model, processor, data: dict, task: str, batch_size: int = 16, progress: bool = False,
                  **generation) -> dict:  # fmt: skip
    """Run one task on `load_eval_data` output; `generation` (max_new_tokens, ...) goes to generate."""
    if task == "caption":
        return evaluate_captioning(model, processor, data["images"], data["references"], batch_size=batch_size,
                                   progress=progress, **generation)  # fmt: skip
    if task == "vqa":
        return evaluate_vqa(model, processor, data["images"], data["questions"], batch_size=batch_size,
                            progress=progress, **generation)  # fmt: skip
    return evaluate_retrieval(model, processor, data["images"], data["references"], batch_size=batch_size)


def markdown_table(columns: dict[str, dict]) -> str:
    """`{column name: {metric: value}}` -> a markdown table, one row per metric (missing cells: "unavailable")."""
    metrics = list(dict.fromkeys(metric for scores in columns.values() for metric in scores))
    lines = ["| metric | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for metric in metrics:
        cells = [f"{scores[metric]:.3f}" if metric in scores else "unavailable" for scores in columns.values()]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

