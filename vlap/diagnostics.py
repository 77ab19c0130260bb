"""Is the assignment target informative? Diagnostics of L_map's Sinkhorn targets, logged by train.py.

A target that is nearly uniform over the vocabulary (entropy close to log V) carries nothing for the image to
predict; one piled onto "a" or "is" is sharp but says nothing about the image either. So we log, for the text-side
and the image-side targets: entropy / log V, the mass on the caption's own content words (its tokens minus function
words, punctuation and special tokens), and how often image and text agree on their top word.
"""

import math

import torch

FUNCTION_WORDS = frozenset(
    "a an the this that these those it its is are was were be been being am of on in at to for from with by and or "
    "but not no as there here what which who whom whose where when how why do does did has have had i you he she we "
    "they me him her us them my your his our their very so than then too can could will would should may might must "
    "shall into onto over under above below up down out off about".split()
)


def content_word_mask(tokenizer, vocab_size: int) -> torch.Tensor:
    """`[vocab_size]` bool: token ids that spell a content word (alphabetic, not a function word, not special)."""
    special = set(tokenizer.all_special_ids)
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    for token_id in range(min(len(tokenizer), vocab_size)):
        word = tokenizer.decode([token_id]).strip().lower()
        mask[token_id] = token_id not in special and word.isalpha() and word not in FUNCTION_WORDS
    return mask


def entropy_ratio(assignment: torch.Tensor) -> float:
    """Mean row entropy of a `[B, V]` assignment over log V: 1 is uniform, 0 a single word."""
    entropy = -(assignment * assignment.clamp_min(1e-30).log()).sum(dim=1)
    return (entropy.mean() / math.log(assignment.shape[1])).item()


@torch.no_grad()
def assignment_diagnostics(image_target, text_target, input_ids, content_words: torch.Tensor) -> dict:
    """Diagnostics of one batch's `[B, V]` targets (the forward's `image_targets` / `text_targets`) and its caption
    ids `[B, T]`."""
    vocab = text_target.shape[1]
    own = torch.zeros(input_ids.shape[0], vocab, dtype=torch.bool, device=input_ids.device)
    own.scatter_(1, input_ids.clamp(max=vocab - 1), True)
    own &= content_words[:vocab].to(own.device)
    return {
        "text_target_entropy": entropy_ratio(text_target),
        "image_target_entropy": entropy_ratio(image_target),
        "text_target_content_mass": (text_target * own).sum(dim=1).mean().item(),
        "image_target_content_mass": (image_target * own).sum(dim=1).mean().item(),
        "top1_agreement": (text_target.argmax(dim=1) == image_target.argmax(dim=1)).float().mean().item(),
    }
