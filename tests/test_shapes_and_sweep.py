"""The coloured-shape world's parsing, the out-of-distribution renders, and the sweep's bookkeeping."""

from experiments.shapes import CLASSES, caption_is_right, question_type, render_shapes
from experiments.sweep import parse_variant, separation


def test_a_caption_is_right_only_when_it_names_exactly_the_colour_and_the_shape():
    assert caption_is_right("a circle that is blue", "blue", "circle")
    assert caption_is_right("A grey triangle.", "gray", "triangle")
    assert not caption_is_right("a blue circle", "blue", "triangle")
    assert not caption_is_right("a blue and red circle", "blue", "circle")  # two colours: not right
    assert not caption_is_right("a circle", "blue", "circle")


def test_question_types():
    assert question_type("what color is the triangle?") == "colour"
    assert question_type("what shape is in the image?") == "shape"
    assert question_type("what is the blue shape?") == "shape"
    assert question_type("is there not a yellow shape in the image?") == "yes/no"
    assert question_type("does the image contain a circle?") == "yes/no"


def test_renders_cover_every_class_and_depend_only_on_the_seed():
    images, colours, shapes = render_shapes(2, seed=5)
    assert len(images) == 2 * len(CLASSES) and sorted({f"{c} {s}" for c, s in zip(colours, shapes)}) == sorted(CLASSES)
    again, _, _ = render_shapes(2, seed=5)
    other, _, _ = render_shapes(2, seed=6)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(images, again))
    assert any(a.size != b.size or a.tobytes() != b.tobytes() for a, b in zip(images, other))


def test_variants_parse_with_yaml_values_and_method_fields_in_the_model_section():
    assert parse_variant("paper=text_representation=hidden_states,word_marginal_weight=null,learning_rate=0.01") == (
        "paper",
        {"model": {"text_representation": "hidden_states", "word_marginal_weight": None}, "learning_rate": 0.01},
    )


def test_a_difference_exceeds_the_spread_only_when_the_seed_ranges_do_not_overlap():
    def runs(*values):
        return {str(seed): {"final": {"test": {"accuracy": v}}} for seed, v in enumerate(values)}

    apart = separation({"a": runs(0.8, 0.9, 0.85), "b": runs(0.1, 0.2, 0.15)}, "a", "b", ["accuracy"])
    assert "+0.700 (exceeds the spread)" in apart
    overlapping = separation({"a": runs(0.5, 0.9, 0.6), "b": runs(0.55, 0.2, 0.3)}, "a", "b", ["accuracy"])
    assert "within the spread" in overlapping


def test_configs_merge_their_model_sections_field_by_field():
    from experiments.runs import merged

    base = {"batch_size": 16, "model": {"num_visual_tokens": 9, "prompt": "A picture of"}}
    assert merged(base, {"batch_size": 8}, {"model": {"prompt": "A photo of"}}) == {
        "batch_size": 8,
        "model": {"num_visual_tokens": 9, "prompt": "A photo of"},
    }
