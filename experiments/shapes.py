"""easy-vqa's world of coloured shapes: class names, caption parsing, question types, and out-of-distribution renders.

easy-vqa draws one of 3 shapes in one of 8 CSS colours on a light background, 64x64. `render_shapes` draws the same
24 classes the way easy-vqa does not (other sizes, positions, rotations, backgrounds, outlines, shades), from a seed,
to test whether a model learned colour and shape rather than easy-vqa's pixels.
"""

import math
import random

from PIL import Image, ImageDraw

COLOURS = {
    "red": (255, 0, 0),
    "green": (0, 128, 0),
    "blue": (0, 0, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "teal": (0, 128, 128),
    "brown": (165, 42, 42),
    "yellow": (255, 255, 0),
}
SHAPES = ("circle", "rectangle", "triangle")
CLASSES = [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]
ANSWERS = [*COLOURS, *SHAPES, "yes", "no"]  # easy-vqa's 13 answers


def named(text: str, names) -> list[str]:
    """The names among `names` that `text` mentions, in order of appearance ("grey" counts as gray)."""
    words = text.lower().replace("grey", "gray").replace(".", " ").replace(",", " ").split()
    return [word for word in words if word in names]


def caption_is_right(caption: str, colour: str, shape: str) -> bool:
    """The caption names the image's colour and shape, and no other colour or shape."""
    return set(named(caption, COLOURS)) == {colour} and set(named(caption, SHAPES)) == {shape}


def question_type(question: str) -> str:
    """easy-vqa's three kinds of question: "colour" (answer a colour), "shape" (answer a shape) or "yes/no"."""
    question = question.lower()
    if question.startswith(("is ", "does ", "are ")):
        return "yes/no"
    return "colour" if "color" in question or "colour" in question else "shape"


def _polygon(shape: str, centre, size: float, angle: float):
    cx, cy = centre
    if shape == "triangle":
        corners = [
            (math.cos(angle + k * 2 * math.pi / 3 - math.pi / 2), math.sin(angle + k * 2 * math.pi / 3 - math.pi / 2))
            for k in range(3)
        ]
        return [(cx + size * x, cy + size * y) for x, y in corners]
    aspect = 0.55  # a rectangle that is clearly not a square
    corners = [(-1, -aspect), (1, -aspect), (1, aspect), (-1, aspect)]
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + size * (x * cos - y * sin), cy + size * (x * sin + y * cos)) for x, y in corners]


def render_shape(colour: str, shape: str, rng: random.Random) -> Image.Image:
    """One image of a `colour` `shape`, with size, position, rotation, background, outline and shade drawn from rng."""
    side = rng.choice([48, 64, 96, 128, 160, 224])
    background = rng.choice(["white", "pastel", "light gray", "noise", "gradient"])
    if background == "noise":
        image = (
            Image.frombytes("L", (side, side), rng.randbytes(side * side)).point(lambda v: 200 + v // 16).convert("RGB")
        )
    elif background == "gradient":
        image = Image.linear_gradient("L").resize((side, side)).point(lambda v: 200 + v // 5).convert("RGB")
    else:
        fill = {"white": (255, 255, 255), "light gray": (225, 225, 225)}.get(background)
        image = Image.new("RGB", (side, side), fill or tuple(rng.randint(215, 250) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    size = side * rng.uniform(0.18, 0.38)
    centre = (rng.uniform(size, side - size), rng.uniform(size, side - size))
    rgb = tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in COLOURS[colour])
    outline = tuple(max(0, c - 70) for c in rgb) if rng.random() < 0.4 else None
    width = max(1, side // 40)
    if shape == "circle":
        box = [centre[0] - size, centre[1] - size, centre[0] + size, centre[1] + size]
        draw.ellipse(box, fill=rgb, outline=outline, width=width)
    else:
        draw.polygon(_polygon(shape, centre, size, rng.uniform(0, 2 * math.pi)), fill=rgb, outline=outline, width=width)
    return image


def render_shapes(per_class: int, seed: int) -> tuple[list[Image.Image], list[str], list[str]]:
    """`per_class` renders of each of the 24 classes: (images, colours, shapes)."""
    rng = random.Random(seed)
    images, colours, shapes = [], [], []
    for colour in COLOURS:
        for shape in SHAPES:
            for _ in range(per_class):
                images.append(render_shape(colour, shape, rng))
                colours.append(colour)
                shapes.append(shape)
    return images, colours, shapes


def render_dataset(per_class: int, seed: int):
    """`render_shapes` as a training set in easy-vqa's columns: image, caption (easy-vqa's caption templates, but for
    the one that says "on a white background"), colour, shape. Mixed into training so that colour and shape are
    learned across sizes, positions and backgrounds."""
    import datasets

    from experiments.easy_vqa import TEMPLATES

    images, colours, shapes = render_shapes(per_class, seed)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.Sequence(datasets.Value("string")),
            "colour": datasets.Value("string"),
            "shape": datasets.Value("string"),
        }
    )
    captions = [
        [t.format(colour=c, shape=s) for t in TEMPLATES if "background" not in t] for c, s in zip(colours, shapes)
    ]
    return datasets.Dataset.from_dict(
        {"image": images, "caption": captions, "colour": colours, "shape": shapes}, features=features
    )
