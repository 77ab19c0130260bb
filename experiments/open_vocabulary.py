"""Images with captions people wrote, from two Debian packages: the open-vocabulary world.

- `openclipart-png` + `openclipart-svg` (public domain): 8,121 drawings; each SVG's RDF metadata holds the drawing's
  title, description and keywords (`cc:Work`), the PNG beside it the pixels. Noisy: collection names, author credits,
  Italian titles; variants of one drawing share a file stem (`..._01`, `..._02`).
- `tuxpaint-stamps-default` (GPL-2): 952 stamps, each `<name>.txt` starting with an English caption ("A zebra."),
  about 400 of them real photographs.

`clipart_records` / `tuxpaint_records` read the packages into plain records; `clean_clipart` applies the cleaning
rules one at a time and counts what each keeps and drops; `family_split` / `concept_split` assign the splits;
`open_vocabulary_dataset` writes the result as a `datasets` dataset with `image`, `captions`, `concept`, `source`,
`family` and `split` columns. Every rule is a small function, tested on hand-made files.
"""

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

CLIPART_SVG, CLIPART_PNG = Path("/usr/share/openclipart/svg"), Path("/usr/share/openclipart/png")
TUXPAINT_STAMPS = Path("/usr/share/tuxpaint/stamps")
PACKAGES = {"clipart": "openclipart-png openclipart-svg", "tuxpaint": "tuxpaint-stamps-default"}

# Titles that name a collection, a theme or nobody's drawing rather than what is drawn (lower case, substrings).
JUNK_TITLE_PARTS = ("collection", "theme", "icon set", "clip art", "clipart", "untitled", "open clip art", "svg")
COLLECTION_FAMILIES = 20  # a title shared by more distinct drawings than this is a collection's name, not a caption
MAX_CAPTION_WORDS = 12
ENGLISH_ZIPF = 1.0  # every word of an English caption is a known English word (wordfreq Zipf >= 1: "lorikeet" 1.5)
GENERIC_KEYWORDS = {"unsorted", "clip", "art", "clipart", "svg", "png", "image", "icon", "drawing", "public", "domain"}


@dataclass
class Record:
    """One image and what people wrote about it, before cleaning."""

    image: Path
    title: str = ""
    description: str = ""
    keywords: list[str] = field(default_factory=list)
    source: str = "clipart"


def missing_package(source: str, folders: tuple[Path, ...]) -> str | None:
    """The apt command that installs `source`'s package when one of its `folders` is missing, else None."""
    if all(folder.is_dir() for folder in folders):
        return None
    return f"apt-get install --no-install-recommends {PACKAGES[source]}"


def svg_metadata(path: Path) -> tuple[str, str, list[str]]:
    """(title, description, keywords) of the drawing itself: the `cc:Work` element of the SVG's RDF metadata (both cc
    namespaces in use), not the titles of its creator or publisher nested deeper. Parsed with defusedxml: entity
    expansion (a "billion laughs" file) is refused, not expanded."""
    from defusedxml import ElementTree

    root = ElementTree.parse(path).getroot()
    work = next((element for element in root.iter() if element.tag.endswith("}Work")), None)
    if work is None:
        return "", "", []

    def child_text(name: str) -> str:
        found = next((element for element in work if element.tag.endswith("}" + name)), None)
        return " ".join((found.text or "").split()) if found is not None else ""

    subject = next((element for element in work if element.tag.endswith("}subject")), None)
    keywords = [" ".join((li.text or "").split()) for li in subject.iter() if li.tag.endswith("}li")] if subject else []
    return child_text("title"), child_text("description"), [k for k in keywords if k]


def family_of(path: Path) -> str:
    """The drawing a file is a variant of: its stem without a trailing number (`acquila_architetto_franc_01` and
    `..._02` are one family)."""
    return re.sub(r"[_\-\s]*\d+$", "", path.stem.lower()) or path.stem.lower()


def words_of(text: str) -> list[str]:
    return re.findall(r"[a-z]+(?:'[a-z]+)?", text.lower())


def is_english(text: str) -> bool:
    """Every word is a known English word (Zipf >= ENGLISH_ZIPF) and, taken together, the words are more English than
    Italian or French (the packages' other languages: "uccello bianco", "risque pour l'environnement")."""
    from wordfreq import zipf_frequency

    words = words_of(text)
    if not words or any(zipf_frequency(word, "en") < ENGLISH_ZIPF for word in words):
        return False
    english = sum(zipf_frequency(word, "en") for word in words)
    return all(english > sum(zipf_frequency(word, other) for word in words) for other in ("it", "fr"))


def is_junk_title(title: str) -> bool:
    """Empty, a collection or credit phrase, a file-name-like string, or too long to be a caption."""
    lowered = title.lower().strip()
    if len(words_of(lowered)) == 0 or len(lowered.split()) > MAX_CAPTION_WORDS:
        return True
    if re.search(r"\d{2,}|[_/\\]|\.\w{3}$", lowered):
        return True
    return any(part in lowered for part in JUNK_TITLE_PARTS)


def caption_candidates(record: Record) -> list[str]:
    """The captions a record offers, best first: a short English description that says more than the title, the
    English title; with neither, an English keyword that the file's own name spells (`padlock_silhouette.png` +
    "padlock"; a keyword the name does not spell is usually a category: "symbol", "mammal")."""
    captions = []
    if (
        record.description
        and len(record.description.split()) <= MAX_CAPTION_WORDS
        and record.description.lower() != record.title.lower()
        and not is_junk_title(record.description)
        and is_english(record.description)
    ):
        captions.append(record.description.rstrip("."))
    if not is_junk_title(record.title) and is_english(record.title):
        captions.append(record.title)
    named = set(words_of(record.image.stem.replace("_", " ").replace("-", " ")))
    keywords = [k for k in record.keywords if k.lower() not in GENERIC_KEYWORDS and not is_junk_title(k)]
    if not captions:
        captions += [k for k in keywords if is_english(k) and set(words_of(k)) <= named][:1]
    return captions


NOT_CONCEPTS = {"it", "its", "the", "and", "of", "with", "on", "in", "for", "to", "a", "an", "one", "two", "three"}


def concept_of(caption: str) -> str:
    """The object a caption names: its last word outside parentheses (English noun phrases end in their head: "two
    red dice" -> "dice"; "LED (orange)" -> "led"); "" when that is no noun (a function word, one or two letters)."""
    words = words_of(re.sub(r"\([^)]*\)", " ", caption))
    head = words[-1] if words else ""
    return "" if len(head) < 3 or head in NOT_CONCEPTS else head


def clipart_records(svg_root: Path = CLIPART_SVG, png_root: Path = CLIPART_PNG) -> tuple[list[Record], Counter]:
    """One record per SVG whose pre-rendered PNG exists, with the drawing's metadata; the counts of files read and of
    those dropped because they have no PNG or their metadata does not parse."""
    counts, records = Counter(), []
    for svg in sorted(svg_root.rglob("*.svg")):
        counts["files"] += 1
        png = png_root / svg.relative_to(svg_root).with_suffix(".png")
        if not png.is_file():
            counts["dropped: no PNG beside the SVG"] += 1
            continue
        try:
            title, description, keywords = svg_metadata(svg)
        except Exception as error:  # a broken or hostile XML file: counted, never fatal
            counts[f"dropped: unreadable metadata ({type(error).__name__})"] += 1
            continue
        records.append(Record(png, title, description, keywords))
    return records, counts


def tuxpaint_records(root: Path = TUXPAINT_STAMPS) -> tuple[list[Record], Counter]:
    """One record per stamp with a PNG and a caption: the first line of its `<name>.txt` (the later lines are
    translations); the counts of captions read and of those dropped (no PNG: the stamp is SVG only)."""
    counts, records = Counter(), []
    for text in sorted(root.rglob("*.txt")):
        counts["files"] += 1
        png = text.with_suffix(".png")
        lines = text.read_text(encoding="utf-8", errors="replace").splitlines()
        caption = " ".join(lines[0].split()).rstrip(".") if lines else ""
        if not png.is_file():
            counts["dropped: no PNG (SVG-only stamp)"] += 1
        elif not caption:
            counts["dropped: empty caption"] += 1
        else:
            records.append(Record(png, title=caption, source="tuxpaint"))
    return records, counts


def clean(records: list[Record]) -> tuple[list[dict], Counter]:
    """The cleaning rules, in order, each counted: a title shared by more than COLLECTION_FAMILIES drawing families is
    a collection's name; then each record keeps its caption candidates (`caption_candidates`: junk titles, non-English
    text and generic keywords never become captions) and is dropped if none is left; its concept is the head word of
    its first caption. Returns rows (`image`, `captions`, `concept`, `source`, `family`) and the counts."""
    families_of_title = {}
    for record in records:
        families_of_title.setdefault(record.title.lower(), set()).add(family_of(record.image))
    counts, rows = Counter(), []
    for record in records:
        if len(families_of_title[record.title.lower()]) > COLLECTION_FAMILIES and record.source == "clipart":
            counts["dropped: collection name as title"] += 1
            continue
        captions = caption_candidates(record)
        if not captions:
            counts["dropped: no English caption (junk or non-English title, no usable description or keyword)"] += 1
            continue
        if not concept_of(captions[0]):
            counts["dropped: the caption's last word names no object"] += 1
            continue
        counts["kept: description as caption" if record.description.rstrip(".") == captions[0] else "kept"] += 1
        rows.append(
            {
                "image": str(record.image),
                "captions": captions,
                "concept": concept_of(captions[0]),
                "source": record.source,
                "family": f"{record.source}/{family_of(record.image)}",
            }
        )
    return rows, counts


def as_phrase(caption: str) -> str:
    """A caption as the continuation of "A picture of": lower case, with "a" before it unless it starts with an
    article, a number or a quantity word ("Dog on Leash" -> "a dog on leash"; "Two Red Dice" -> "two red dice")."""
    lowered = " ".join(caption.split()).lower()
    first = lowered.split(" ", 1)[0]
    starts = {"a", "an", "the", "some", "two", "three", "four", "five", "many", "several"}
    return lowered if first in starts or first[:1].isdigit() else f"a {lowered}"


def bucket(name: str) -> int:
    """A stable number in [0, 100) for a name (not Python's salted hash)."""
    return int(hashlib.sha256(name.encode()).hexdigest(), 16) % 100


def family_split(family: str, validation: int = 10, test: int = 10) -> str:
    """train / validation / test by drawing family, never by file: variants of one drawing stay together."""
    value = bucket(family)
    return "test" if value < test else "validation" if value < test + validation else "train"


def concept_split(concept: str, held_out: int = 15) -> bool:
    """Whether a concept is held out of training altogether (about `held_out` percent of concepts, fixed by name)."""
    return bucket("concept:" + concept) < held_out


PHOTO_COLOURS = 2000  # distinct colours in a 128-px thumbnail above which a stamp is a photograph, not a drawing
IMAGE_SIDE = 256  # images are stored at most this large (the vision models read 224 px)


def is_photo(image, path: Path) -> bool:
    """A Tux Paint stamp is a photograph when it has many colours and does not sit in a `cartoon` folder (drawings,
    letters and symbols have few flat colours)."""
    if "cartoon" in path.parts:
        return False
    small = image.convert("RGBA")
    small.thumbnail((128, 128))
    return len({pixel[:3] for pixel in small.get_flattened_data() if pixel[3] > 128}) >= PHOTO_COLOURS


def readable(rows: list[dict]) -> tuple[list[dict], int]:
    """The rows whose image the project's image policy (`open_image`) reads, and how many it refused: truncated or
    broken files, and images over PIL's pixel limit (some drawings are rendered at 10,562 x 16,000 px). Every image
    is decoded once here, so the dataset writer never meets a file it cannot read."""
    from modeling_vlap.processing_vlap import open_image

    kept = []
    for row in rows:
        try:
            open_image(row["image"])
        except ValueError:
            continue
        kept.append(row)
    return kept, len(rows) - len(kept)


def assign_splits(rows: list[dict]) -> Counter:
    """Each row's `split`: Tux Paint photographs -> "photos" (never trained on), other stamps -> "stamp_drawings";
    clip art of a held-out concept -> "held_out_concepts"; the rest by drawing family -> train / validation / test.
    Returns the count per split."""
    from PIL import Image

    for row in rows:
        if row["source"] == "tuxpaint":
            with Image.open(row["image"]) as image:
                row["split"] = "photos" if is_photo(image, Path(row["image"])) else "stamp_drawings"
        elif concept_split(row["concept"]):
            row["split"] = "held_out_concepts"
        else:
            row["split"] = family_split(row["family"])
    return Counter(row["split"] for row in rows)


def open_vocabulary_dataset(
    root: Path, svg_root: Path = CLIPART_SVG, png_root: Path = CLIPART_PNG, stamps: Path = TUXPAINT_STAMPS, log=print
) -> Path:
    """Build (once) and return `root/open-vocabulary`: a `DatasetDict` with one split per `assign_splits` name and the
    columns `image` (composited on white, at most IMAGE_SIDE px), `captions`, `concept`, `source`, `family`; and
    `counts.json` beside it, what every rule kept and dropped. A missing package is a one-line error naming it."""
    import json

    import datasets

    from modeling_vlap.processing_vlap import open_image

    folder = root / "open-vocabulary"
    if (folder / "dataset_dict.json").exists():
        return folder
    for source, folders in (("clipart", (svg_root, png_root)), ("tuxpaint", (stamps,))):
        command = missing_package(source, folders)
        if command:
            raise SystemExit(f"the {source} images are not installed: {command}")
    clipart, clipart_counts = clipart_records(svg_root, png_root)
    stamp_records, stamp_counts = tuxpaint_records(stamps)
    clipart_rows, clipart_cleaning = clean(clipart)
    stamp_rows, stamp_cleaning = clean(stamp_records)
    clipart_rows, clipart_cleaning["dropped: unreadable or over the pixel limit"] = readable(clipart_rows)
    stamp_rows, stamp_cleaning["dropped: unreadable or over the pixel limit"] = readable(stamp_rows)
    rows = clipart_rows + stamp_rows
    splits = assign_splits(rows)
    counts = {
        "openclipart": {**clipart_counts, **clipart_cleaning},
        "tuxpaint": {**stamp_counts, **stamp_cleaning},
        "splits": dict(sorted(splits.items())),
        "concepts": {name: len({r["concept"] for r in rows if r["split"] == name}) for name in sorted(splits)},
    }

    def examples(split: str):
        for row in rows:
            if row["split"] == split:
                image = open_image(row["image"])  # the project's image policy: transparency onto white
                image.thumbnail((IMAGE_SIDE, IMAGE_SIDE))
                yield {**{k: v for k, v in row.items() if k != "split"}, "image": image, "path": row["image"]}

    features = datasets.Features(
        {
            "image": datasets.Image(),
            "captions": datasets.Sequence(datasets.Value("string")),
            "concept": datasets.Value("string"),
            "source": datasets.Value("string"),
            "family": datasets.Value("string"),
            "path": datasets.Value("string"),
        }
    )
    splits_data = {
        name: datasets.Dataset.from_generator(examples, gen_kwargs={"split": name}, features=features)
        for name in sorted(splits)
    }
    datasets.DatasetDict(splits_data).save_to_disk(str(folder))
    (folder / "counts.json").write_text(json.dumps(counts, indent=2))
    log(json.dumps(counts, indent=2))
    return folder


def gallery(run: Path, png: Path, per_set: int = 6) -> Path:
    """A PNG a person can look at: for the first `per_set` images of each evaluated set of a
    `python -m experiments.demo --dataset open-vocabulary --baseline` run (its results.json), the image, its true
    caption, VLAP's caption and the caption-only baseline's."""
    import json

    import matplotlib.pyplot as plt

    from modeling_vlap.processing_vlap import open_image
    from vlap.tasks import save_figure

    results = json.loads((run / "results.json").read_text())
    models = [name for name in ("vlap", "caption_only") if name in results]
    rows = [
        (name, [results[model]["examples"][name][index] for model in models])
        for name in results[models[0]]["examples"]
        for index in range(min(per_set, len(results[models[0]]["examples"][name])))
    ]
    figure, axes = plt.subplots(len(rows) // per_set, per_set, figsize=(3.0 * per_set, 3.3 * len(rows) // per_set))
    for axis, (name, examples) in zip(axes.flat, rows):
        axis.imshow(open_image(examples[0]["path"]))
        axis.set_axis_off()
        said = "\n".join(f"{model.replace('_', '-')}: {ex['caption'][:34]}" for model, ex in zip(models, examples))
        axis.set_title(f"[{name}] {examples[0]['captions'][0][:34]}\n{said}", fontsize=7, loc="left")
    save_figure(figure, png, dpi=80)
    return png


def main(argv=None) -> None:
    """`python -m experiments.open_vocabulary [--root DIR]`: build the dataset (once) and print what each rule kept
    and dropped. `--gallery RUN PNG` draws `gallery` of an experiments.demo run instead."""
    import argparse
    import json

    from experiments.assets import cache_root

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None, help="where the dataset is written (default: the asset cache)")
    parser.add_argument("--gallery", nargs=2, metavar=("RUN", "PNG"), help="draw the gallery of a demo run")
    args = parser.parse_args(argv)
    if args.gallery:
        return print(gallery(Path(args.gallery[0]), Path(args.gallery[1])))
    folder = open_vocabulary_dataset(Path(args.root) if args.root else cache_root(), log=lambda _: None)
    print(f"{folder}\n" + json.dumps(json.loads((folder / "counts.json").read_text()), indent=2))


if __name__ == "__main__":
    main()
