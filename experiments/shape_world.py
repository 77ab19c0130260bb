"""The closed world of the demo: easy-vqa's 24 coloured-shape classes and their renders. Its data splits (a fixed
validation slice carved from easy-vqa's train split: every choice is made there, never on test), the training set
(easy-vqa images plus renders), its VQA questions and baselines, and `evaluate_shape_world`: everything a model of
that world should get right."""

from collections import Counter
from pathlib import Path

import datasets
import torch
import torch.nn.functional as F

from experiments.assets import cache_root, vision_states
from experiments.easy_vqa import TEMPLATES, easy_vqa_dataset
from experiments.shapes import ANSWERS, CLASSES, caption_is_right, named, question_type, render_dataset, render_shapes
from vlap import tasks
from vlap.evaluation import RETRIEVAL_SCORINGS, answer_without_image
from vlap.metrics import load_metric, metric_functions

VALIDATION_ROWS = 500  # carved from the (shuffled) train split; the rest is the training pool
RENDER_SEED_TRAIN = 0  # renders mixed into training (TRAIN_RENDERS_PER_CLASS of each of the 24 classes)
TRAIN_RENDERS_PER_CLASS = 20
RENDER_SEED_VALIDATION = 1  # renders used to choose; the reported held-out renders use another seed
RENDER_SEED_REPORTED = 2
DEMO_RENDERS_PER_CLASS = 60  # `make demo` trains with more renders of each class (docs/results.md)


def split_train(out: Path) -> tuple[Path, datasets.Dataset]:
    """(training-pool folder, validation slice): a fixed split of easy-vqa's captioned train images."""
    train = datasets.load_from_disk(str(easy_vqa_dataset(cache_root())))["train"].shuffle(seed=0)
    pool, validation = train.select(range(VALIDATION_ROWS, len(train))), train.select(range(VALIDATION_ROWS))
    folder = out / "train-pool"
    if not (folder / "state.json").exists():
        pool.save_to_disk(str(folder))
    return folder, validation


def training_set(out: Path, easy_vqa_rows: datasets.Dataset, renders_per_class: int = TRAIN_RENDERS_PER_CLASS) -> Path:
    """The folder train.py reads: `easy_vqa_rows` (of the training pool) plus `renders_per_class` renders of every
    class (seed RENDER_SEED_TRAIN), in the columns both share."""
    folder = out / f"train-{len(easy_vqa_rows)}-renders{renders_per_class}"
    if not (folder / "state.json").exists():
        renders = render_dataset(renders_per_class, RENDER_SEED_TRAIN)
        rows = easy_vqa_rows.select_columns(list(renders.features)).cast(renders.features)
        datasets.concatenate_datasets([rows, renders]).save_to_disk(str(folder))
    return folder


def questions_of(dataset, limit: int, seed: int = 0) -> list[tuple]:
    """(row, question, [answer]) triples, a fixed random subset of `limit`."""
    triples = [
        (row, q, [a])
        for row, (qs, ans) in enumerate(zip(dataset["questions"], dataset["answers"]))
        for q, a in zip(qs, ans)
    ]
    order = torch.randperm(len(triples), generator=torch.Generator().manual_seed(seed)).tolist()
    return [triples[i] for i in order[:limit]]


def majority_answers(dataset) -> dict:
    """The most frequent training answer of each question type (the majority baseline)."""
    counts = {}
    for qs, ans in zip(dataset["questions"], dataset["answers"]):
        for q, a in zip(qs, ans):
            counts.setdefault(question_type(q), Counter())[a] += 1
    return {kind: counter.most_common(1)[0][0] for kind, counter in counts.items()}


def evaluation_sets(
    name: str, rows: datasets.Dataset, questions: int, renders_per_class: int, render_seed: int
) -> dict[str, dict]:
    """`evaluate_shape_world`'s inputs for easy-vqa `rows` (`questions` of their VQA triples) under `name`, and for
    `renders_per_class` renders of each class (seed `render_seed`) under "renders"; the frozen vision output of
    both computed once and kept (`assets.vision_states`)."""
    renders, colours, shapes = render_shapes(renders_per_class, render_seed)
    return {
        name: {
            "vision_hidden_states": vision_states(rows["image"], f"{name}-{len(rows)}"),
            "colours": rows["colour"],
            "shapes": rows["shape"],
            "questions": questions_of(rows, questions),
        },
        "renders": {
            "vision_hidden_states": vision_states(renders, f"renders-{render_seed}-{len(renders)}"),
            "colours": colours,
            "shapes": shapes,
        },
    }


def vqa_by_type(predicted, questions, types) -> dict:
    scores = {}
    for kind in sorted(set(types)):
        rows = [i for i, t in enumerate(types) if t == kind]
        accuracy = load_metric("vqa_accuracy").compute(
            predictions=[predicted[i] for i in rows], references=[list(questions[i][2]) for i in rows]
        )
        scores[f"vqa_{kind}"] = accuracy["vqa_accuracy"]
    return scores


@torch.no_grad()
def evaluate_shape_world(
    model,
    processor,
    vision_hidden_states,
    colours,
    shapes,
    questions=(),
    batch_size: int = 32,
    arithmetic_per_class: int = 4,
    other_vqa_layouts: bool = True,
) -> dict:
    """Everything a model of easy-vqa's 24 coloured-shape classes should get right, on images of known class.

    - caption_colour_shape: the caption names the image's colour and shape (and no other);
    - classification_feature / classification_code: zero-shot classification among the 24 captions "a {colour}
      {shape}", by feature cosine and by the code space (log-likelihood of each caption's assignment under the
      image's predicted assignment over words: what pipeline("zero-shot-image-classification") ranks by);
    - image_to_text_class_R@K, text_to_image_class_R@K: relevance-aware retrieval over the 72 class captions by
      feature cosine; the same with a `_code` suffix by the code space (`tasks.image_text_scores`);
    - top5_colour_and_shape: the colour and the shape word both among the image's top-5 words;
    - arithmetic_hit_rate: image - "its colour" + "another colour" lands nearest that class's mean image feature;
    - vqa, vqa_{colour,shape,yes/no} when (row, question, answers) triples are given: open-ended generation in
      `tasks.VQA_TEMPLATE`'s layout (the model's caption, then the question); vqa_paper_layout: the same after the
      paper's "Question: ... Answer:" straight after the visual prefix; closed_set_vqa_*: the most likely of easy-vqa's
      13 answers (`tasks.choose_answer`); these two only with `other_vqa_layouts`; `vqa_baselines` gives the
      majority-answer, no-image and true-caption figures of the same questions.
    """
    labels = [f"{c} {s}" for c, s in zip(colours, shapes)]
    shared = {"vision_hidden_states": vision_hidden_states, "batch_size": batch_size}
    captions = tasks.caption(model, processor, max_new_tokens=12, **shared)
    scores = {"caption_colour_shape": sum(map(caption_is_right, captions, colours, shapes)) / len(captions)}

    image_features = tasks.image_features(model, processor, **shared)
    class_captions = [TEMPLATES[0].format(colour=n.split()[0], shape=n.split()[1]) for n in CLASSES]
    text_features = tasks.text_features(model, processor, class_captions)
    truth = torch.tensor([CLASSES.index(label) for label in labels])
    scores["classification_feature"] = ((image_features @ text_features.T).argmax(1) == truth).float().mean().item()
    by_code = tasks.classify(model, processor, labels=CLASSES, **shared)  # = pipeline("zero-shot-image-classification")
    scores["classification_code"] = sum(r[0][0] == label for r, label in zip(by_code, labels)) / len(labels)

    all_captions = [t.format(colour=n.split()[0], shape=n.split()[1]) for n in CLASSES for t in TEMPLATES]
    text_classes = [n for n in CLASSES for _ in TEMPLATES]
    class_retrieval_recall = metric_functions("retrieval_recall").class_retrieval_recall
    for method, suffix in RETRIEVAL_SCORINGS:
        similarity = tasks.image_text_scores(model, processor, image_features, all_captions, method)
        recall = class_retrieval_recall(similarity, labels, text_classes, ks=(1, 5))
        scores.update({f"{k}{suffix}": v for k, v in recall.items()})

    words = tasks.read_words(model, processor, top_k=5, **shared)
    scores["top5_colour_and_shape"] = sum(
        colour in named(" ".join(w for w, _ in top), {colour}) and shape in named(" ".join(w for w, _ in top), {shape})
        for top, colour, shape in zip(words, colours, shapes)
    ) / len(words)

    prototypes = torch.stack(
        [
            F.normalize(image_features[truth == k].mean(0), dim=0)
            if (truth == k).any()
            else torch.zeros(image_features.shape[1])
            for k in range(len(CLASSES))
        ]
    )
    hits = trials = 0
    for k, name in enumerate(CLASSES):
        colour, shape = name.split()
        for row in (truth == k).nonzero().flatten()[:arithmetic_per_class].tolist():
            for other in {c for c, _ in (n.split() for n in CLASSES)} - {colour}:
                vector = (
                    image_features[row]
                    - tasks.word_vector(model, processor, colour)
                    + tasks.word_vector(model, processor, other)
                )
                hits += int((prototypes @ vector).argmax()) == CLASSES.index(f"{other} {shape}")
                trials += 1
    scores["arithmetic_hit_rate"] = hits / max(trials, 1)

    if questions:
        rows = [row for row, _, _ in questions]
        texts = [question for _, question, _ in questions]
        predicted = tasks.answer(
            model,
            processor,
            vision_hidden_states=vision_hidden_states[rows],
            questions=texts,
            batch_size=batch_size,
            max_new_tokens=4,
        )
        types = [question_type(q) for q in texts]
        scores["vqa"] = load_metric("vqa_accuracy").compute(
            predictions=predicted, references=[list(a) for _, _, a in questions]
        )["vqa_accuracy"]
        scores.update(vqa_by_type(predicted, questions, types))
        if other_vqa_layouts:
            paper = tasks.answer(
                model,
                processor,
                vision_hidden_states=vision_hidden_states[rows],
                questions=texts,
                template=tasks.PAPER_VQA_TEMPLATE,
                batch_size=batch_size,
                max_new_tokens=4,
            )
            scores["vqa_paper_layout"] = load_metric("vqa_accuracy").compute(
                predictions=paper, references=[list(a) for _, _, a in questions]
            )["vqa_accuracy"]
            chosen = tasks.choose_answer(
                model,
                processor,
                vision_hidden_states=vision_hidden_states[rows],
                questions=texts,
                candidates=ANSWERS,
                batch_size=4 * batch_size,
            )
            scores.update({f"closed_set_{k}": v for k, v in vqa_by_type(chosen, questions, types).items()})
        scores["vqa_examples"] = [(q, p) for q, p in zip(texts[:6], predicted[:6])]
    scores["caption_examples"] = captions[:6]
    scores["word_examples"] = [[w for w, _ in top] for top in words[:3]]
    return scores


def vqa_baselines(
    model, processor, questions, majority_answers: dict, colours=None, shapes=None, batch_size: int = 32
) -> dict:
    """Per question type: the majority training answer of the type, the bare frozen LLM with no image and, given the
    images' `colours` and `shapes`, `true_caption_scores` in the default layout."""
    texts = [question for _, question, _ in questions]
    types = [question_type(q) for q in texts]
    blind = answer_without_image(model, processor, texts, batch_size=batch_size)
    scores = {f"no_image_{k}": v for k, v in vqa_by_type(blind, questions, types).items()}
    if colours is not None:
        scores.update(true_caption_scores(model, processor, questions, colours, shapes, batch_size))
    guess = [majority_answers[t] for t in types]
    scores.update({f"majority_{k}": v for k, v in vqa_by_type(guess, questions, types).items()})
    return scores


def true_caption_scores(
    model, processor, questions, colours, shapes, batch_size: int = 32, template: str = tasks.VQA_TEMPLATE
) -> dict:
    """Per question type: the bare LLM reading each image's true caption in `template` (the answers a perfect caption
    would allow this LLM: the ceiling of that describe-then-answer layout)."""
    texts = [question for _, question, _ in questions]
    truth = [TEMPLATES[0].format(colour=colours[row], shape=shapes[row]) for row, _, _ in questions]
    read = answer_without_image(model, processor, texts, truth, batch_size=batch_size, template=template)
    types = [question_type(q) for q in texts]
    return {f"true_caption_{k}": v for k, v in vqa_by_type(read, questions, types).items()}
