"""The open-vocabulary sources (experiments/open_vocabulary.py) on hand-made SVG, PNG and TXT files."""

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from experiments.open_vocabulary import (
    COLLECTION_FAMILIES,
    Record,
    as_phrase,
    assign_splits,
    caption_candidates,
    clean,
    clipart_records,
    concept_of,
    concept_split,
    family_of,
    family_split,
    is_photo,
    open_vocabulary_dataset,
    svg_metadata,
)

pytest.importorskip("defusedxml")
pytest.importorskip("wordfreq")

OLD_CC, NEW_CC = "http://web.resource.org/cc/", "http://creativecommons.org/ns#"


def svg(title: str, description: str = "", keywords=(), cc: str = OLD_CC) -> str:
    items = "".join(f"<rdf:li>{keyword}</rdf:li>" for keyword in keywords)
    return (
        '<svg xmlns="http://www.w3.org/2000/svg"><metadata>'
        f'<rdf:RDF xmlns:cc="{cc}" xmlns:dc="http://purl.org/dc/elements/1.1/" '
        'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><cc:Work rdf:about="">'
        f"<dc:title>{title}</dc:title><dc:description>{description}</dc:description>"
        f"<dc:subject><rdf:Bag>{items}</rdf:Bag></dc:subject>"
        "<dc:creator><cc:Agent><dc:title>Some Author</dc:title></cc:Agent></dc:creator>"
        "</cc:Work></rdf:RDF></metadata></svg>"
    )


BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
    '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><svg xmlns="http://www.w3.org/2000/svg"><title>&c;</title></svg>'
)


def transparent_png(path: Path, colour=(200, 30, 30)) -> None:
    """A coloured disc on a fully transparent background."""
    pixels = np.zeros((40, 40, 4), dtype=np.uint8)
    yy, xx = np.mgrid[:40, :40]
    pixels[(yy - 20) ** 2 + (xx - 20) ** 2 < 150] = (*colour, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGBA").save(path)


@pytest.mark.parametrize("cc", [OLD_CC, NEW_CC])
def test_the_drawings_own_title_description_and_keywords_not_its_authors(tmp_path, cc):
    path = tmp_path / "cage.svg"
    path.write_text(svg("Metal Cage", "A standard, metal cage", ["cage", "metal"], cc=cc))
    assert svg_metadata(path) == ("Metal Cage", "A standard, metal cage", ["cage", "metal"])


def test_captions_prefer_a_description_and_drop_junk_and_italian():
    described = Record(Path("x.png"), "Dartboard", "A dartboard with three darts", ["game"])
    assert caption_candidates(described) == ["A dartboard with three darts", "Dartboard"]
    assert caption_candidates(Record(Path("x.png"), "uccello bianco e nero")) == []  # Italian
    assert caption_candidates(Record(Path("x.png"), "cigno")) == []
    assert caption_candidates(Record(Path("x.png"), "risque pour l'environnement")) == []  # French
    assert caption_candidates(Record(Path("x.png"), "part of the flat icon collection")) == []  # a collection
    assert caption_candidates(Record(Path("x.png"), "fc08")) == []  # a file name
    assert caption_candidates(Record(Path("owl_01.png"), "gramastar", keywords=["unsorted", "owl"])) == ["owl"]
    assert caption_candidates(Record(Path("x_01.png"), "gramastar", keywords=["symbol"])) == []  # a category
    assert concept_of("two red dice") == "dice" and concept_of("A standard, metal cage") == "cage"
    assert concept_of("LED Triangular 1 (Orange)") == "triangular" and concept_of("Letter W") == ""


def test_cleaning_counts_each_rule_and_drops_a_title_many_drawings_share(tmp_path):
    records = [Record(tmp_path / f"drawing{i}a.png", "Lemon svg theme") for i in range(COLLECTION_FAMILIES + 1)]
    records += [Record(tmp_path / f"star{i}.png", "Star") for i in range(COLLECTION_FAMILIES + 1)]  # one family
    records += [Record(tmp_path / "cigno.png", "cigno"), Record(tmp_path / "hotdog.png", "hot dog")]
    rows, counts = clean(records)
    assert counts["dropped: collection name as title"] == COLLECTION_FAMILIES + 1
    assert sum(v for k, v in counts.items() if k.startswith("dropped: no English")) == 1
    assert sorted({row["concept"] for row in rows}) == ["dog", "star"] and len(rows) == COLLECTION_FAMILIES + 2


def test_variants_of_a_drawing_share_a_family_and_so_a_split():
    variants = [Path(f"/x/acquila_architetto_franc_0{i}.png") for i in range(1, 5)]
    assert {family_of(path) for path in variants} == {"acquila_architetto_franc"}
    families = [f"clipart/drawing{i}" for i in range(400)]
    splits = [family_split(family) for family in families]
    assert splits == [family_split(family) for family in families]  # fixed, not random per call
    assert 0.7 < splits.count("train") / len(splits) < 0.9 and splits.count("test") > 0


def test_held_out_concepts_never_reach_training_and_photos_are_their_own_split(tmp_path):
    photo, drawing = tmp_path / "zebra.png", tmp_path / "cartoon" / "zebra.png"
    gradient = np.random.RandomState(0).randint(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(gradient).save(photo)
    transparent_png(drawing)
    assert is_photo(Image.open(photo), photo) and not is_photo(Image.open(drawing), drawing)
    concepts = [f"thing{i}" for i in range(200)]
    held_out = {concept for concept in concepts if concept_split(concept)}
    assert 0 < len(held_out) < len(concepts) / 3
    rows = [{"source": "clipart", "concept": c, "family": f"clipart/{c}{k}"} for c in concepts for k in range(3)]
    rows += [{"source": "tuxpaint", "concept": "zebra", "family": "tuxpaint/zebra", "image": str(p)} for p in (photo,)]
    assign_splits(rows)
    assert not {row["concept"] for row in rows if row["split"] == "train"} & held_out
    assert {row["concept"] for row in rows if row["split"] == "held_out_concepts"} == held_out
    assert rows[-1]["split"] == "photos"


def test_a_hostile_svg_is_counted_not_expanded(tmp_path):
    (tmp_path / "svg").mkdir()
    (tmp_path / "svg" / "laughs.svg").write_text(BILLION_LAUGHS)
    (tmp_path / "svg" / "cage.svg").write_text(svg("Metal Cage"))
    for name in ("laughs", "cage"):
        transparent_png(tmp_path / "png" / f"{name}.png")
    records, counts = clipart_records(tmp_path / "svg", tmp_path / "png")
    assert [record.title for record in records] == ["Metal Cage"]
    assert counts["dropped: unreadable metadata (EntitiesForbidden)"] == 1


def test_the_dataset_composites_transparency_and_counts_every_rule(tmp_path):
    svgs, pngs, stamps = tmp_path / "svg", tmp_path / "png", tmp_path / "stamps"
    for name, title in (("cage_01", "Metal Cage"), ("cage_02", "Metal Cage"), ("cigno", "cigno"), ("dice", "two dice")):
        (svgs / "things").mkdir(parents=True, exist_ok=True)
        (svgs / "things" / f"{name}.svg").write_text(svg(title))
        transparent_png(pngs / "things" / f"{name}.png")
    (svgs / "things" / "no_png.svg").write_text(svg("Lonely Cat"))
    stamps.mkdir()
    (stamps / "zebra.txt").write_text("A zebra.\nfr.utf8=Un zèbre.\n")
    transparent_png(stamps / "zebra.png")
    (stamps / "apple.txt").write_text("An apple.\n")
    transparent_png(stamps / "apple.png")
    (stamps / "apple.png").write_bytes((stamps / "apple.png").read_bytes()[:60])  # truncated: its header reads
    folder = open_vocabulary_dataset(tmp_path / "out", svgs, pngs, stamps, log=lambda _: None)
    counts = json.loads((folder / "counts.json").read_text())
    assert counts["openclipart"]["files"] == 5 and counts["openclipart"]["dropped: no PNG beside the SVG"] == 1
    assert counts["tuxpaint"]["files"] == 2 and counts["tuxpaint"]["dropped: unreadable or over the pixel limit"] == 1
    loaded = datasets.load_from_disk(str(folder))
    rows = [row for split in loaded.values() for row in split]
    assert sorted(row["concept"] for row in rows) == ["cage", "cage", "dice", "zebra"]
    assert len({row["family"] for row in rows if row["concept"] == "cage"}) == 1
    corner = np.asarray(rows[0]["image"].convert("RGB"))[0, 0]
    assert corner.tolist() == [255, 255, 255]  # transparency composited on white


def test_a_missing_package_is_one_line_naming_it(tmp_path):
    with pytest.raises(SystemExit, match="apt-get install --no-install-recommends openclipart-png openclipart-svg"):
        open_vocabulary_dataset(tmp_path / "out", tmp_path / "no-svg", tmp_path / "no-png", tmp_path, log=print)
    assert not (tmp_path / "out").exists()


def test_the_open_vocabulary_figures_recount_from_classify_and_caption(backbones):
    import torch
    from tiny import build, shape_image

    from experiments.demo import open_vocabulary_scores
    from vlap import tasks
    from vlap.evaluation import named_class

    model, processor = build(backbones, "llama")
    model.eval()
    concepts = ["circle", "square", "star", "circle"]
    rows = datasets.Dataset.from_dict(
        {
            "image": [shape_image(colour, shape) for colour, shape in zip(["red", "blue", "green", "white"], concepts)],
            "captions": [[f"a {c}", f"one {c}"] for c in concepts],
            "concept": concepts,
            "path": [f"{c}.png" for c in concepts],
        }
    )
    names = ["circle", "square", "star"]
    with torch.no_grad():
        states = model.get_vision_hidden_states(processor(images=list(rows["image"]))["pixel_values"])
    scores = open_vocabulary_scores(model, processor, rows, names, "validation", states)["scores"]
    captions = tasks.caption(model, processor, vision_hidden_states=states, max_new_tokens=12)
    named = [named_class(caption, names) == names.index(c) for caption, c in zip(captions, concepts)]
    assert scores["validation: caption_names_class"] == pytest.approx(sum(named) / 4)
    ranked = tasks.classify(model, processor, labels=names, vision_hidden_states=states)
    assert scores["validation: classification_code"] == pytest.approx(
        sum(r[0][0] == c for r, c in zip(ranked, concepts)) / 4
    )
    assert {"validation: image_to_text_R@1_code", "validation: text_to_image_R@5", "validation: CIDEr"} <= set(scores)


def test_captions_as_phrases_after_the_prompt():
    assert as_phrase("Dog on Leash") == "a dog on leash"
    assert as_phrase("Two Red  Dice") == "two red dice" and as_phrase("An albino peahen") == "an albino peahen"
    assert as_phrase("3 apples") == "3 apples"
