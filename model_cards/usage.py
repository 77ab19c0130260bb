"""The model card's "How to use" blocks, runnable as written: `python model_cards/usage.py MODEL IMAGE`.

push_to_hub.py copies each block between "# ---" markers into the card, with MODEL and IMAGE spelled as the repo id and
"photo.jpg"; tests/test_push_to_hub.py runs this file on a tiny saved model, so every block the card shows runs.
"""

import sys

MODEL, IMAGE = sys.argv[1], sys.argv[2]

# --- image-to-text: captions, or an answer after a prompt
from transformers import pipeline

captioner = pipeline("image-to-text", model=MODEL, trust_remote_code=True)
print(captioner(IMAGE, max_new_tokens=20))  # [{"generated_text": "..."}]
print(captioner(IMAGE, prompt="Question: what colour is it? Answer:", max_new_tokens=5))

# --- image-text-to-text: a text prompt, or chat messages with the image in them
chat = pipeline("image-text-to-text", model=MODEL, trust_remote_code=True)
print(chat(images=IMAGE, text="Question: what colour is it? Answer:", max_new_tokens=5, return_full_text=False))
messages = [
    {
        "role": "user",
        "content": [{"type": "image", "image": IMAGE}, {"type": "text", "text": "What colour is the shape?"}],
    }
]
print(chat(text=messages, max_new_tokens=5)[0]["generated_text"][-1])  # the assistant's turn

# --- zero-shot-image-classification: labels scored in VLAP's word space (as training's swapped prediction)
classifier = pipeline("zero-shot-image-classification", model=MODEL, trust_remote_code=True)
print(classifier(IMAGE, candidate_labels=["red circle", "blue rectangle", "green triangle"]))  # best first

# --- image-feature-extraction: the mapped visual tokens, or their pooled (normalised mean) feature
extractor = pipeline("image-feature-extraction", model=MODEL, trust_remote_code=True)
tokens = extractor(IMAGE, return_tensors=True)  # [1, visual tokens, LLM width]
pooled = extractor(IMAGE, pool=True)  # [[...]]: the image feature, comparable with model.get_text_features
print(tuple(tokens.shape), len(pooled[0]))
