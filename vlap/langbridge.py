"""LangBridge tooling: choose the vocabulary subset a LangBridge speaks in (or the words a word bridge says), and move a
trained bridge to another LLM.

Token strings are compared as each token spells inside a text ("Ġred" of a byte-level BPE and "▁red" of a
SentencePiece model are both " red"), so two LLMs with different tokenizers share every string both can spell as
one token.
"""

import re
from collections import Counter
from pathlib import Path

import torch

REPLACEMENT_CHARACTER = "\ufffd"  # a token that is only part of a UTF-8 sequence has no string of its own


def token_strings(tokenizer) -> list[str | None]:
    """What each token id spells inside a text (after another word), or None for special and partial-byte tokens.

    Decoding [anchor, token] and removing the anchor keeps the token's leading space, which decoding a token
    alone may strip (SentencePiece).
    """
    anchor = tokenizer("a", add_special_tokens=False)["input_ids"]
    prefix = tokenizer.decode(anchor)
    special = set(tokenizer.all_special_ids)
    texts = tokenizer.batch_decode([anchor + [i] for i in range(len(tokenizer))])
    strings = []
    for token_id, text in enumerate(texts):
        string = text[len(prefix) :] if text.startswith(prefix) else None
        usable = token_id not in special and string and REPLACEMENT_CHARACTER not in string
        strings.append(string if usable else None)
    return strings


def string_to_id(tokenizer) -> dict[str, int]:
    """Token string -> the lowest id that spells it."""
    mapping = {}
    for token_id, string in enumerate(token_strings(tokenizer)):
        if string is not None:
            mapping.setdefault(string, token_id)
    return mapping


def select_vocabulary(
    token_counts: torch.Tensor, tokenizer, size: int, transfer_tokenizers=(), given: list[str] | None = None
) -> tuple[list[str], list[int]]:
    """The LangBridge subset: the `size` most frequent caption tokens (or the `given` strings, in order) whose string
    every tokenizer in `transfer_tokenizers` also has as one token. Returns (strings, this LLM's ids)."""
    strings = token_strings(tokenizer)
    ids_of = string_to_id(tokenizer)
    shared = [string_to_id(other) for other in transfer_tokenizers]
    if given is not None:
        candidates = [(ids_of.get(string), string) for string in given]
        missing = [string for token_id, string in candidates if token_id is None]
        if missing:
            raise ValueError(
                f"{len(missing)} given LangBridge strings are not single tokens of this LLM: {missing[:5]}"
            )
    else:
        order = torch.argsort(torch.as_tensor(token_counts), descending=True, stable=True).tolist()
        candidates = [(i, strings[i]) for i in order if i < len(strings) and token_counts[i] > 0 and strings[i]]
    chosen = [(i, string) for i, string in candidates if all(string in other for other in shared)][:size]
    if not chosen:
        raise ValueError("no caption token is shared by every LLM named for transfer: the LangBridge subset is empty")
    return [string for _, string in chosen], [i for i, _ in chosen]


WORD = re.compile(r"[^\W\d_]+(?:['-][^\W\d_]+)*")  # letters, with inner apostrophes and hyphens ("don't", "t-shirt")


def caption_words(captions, size: int) -> list[str]:
    """A word bridge's words: the `size` most frequent words of `captions` as written (a bridge can only learn to say
    words its training captions use), function words ("a", "is", "on", ...) left out; most frequent first."""
    from vlap.diagnostics import FUNCTION_WORDS

    counts = Counter(
        word for caption in captions for word in WORD.findall(caption) if word.lower() not in FUNCTION_WORDS
    )
    if not counts:
        raise ValueError("the training captions hold no content word: the word bridge would have nothing to say")
    return [word for word, _ in counts.most_common(size)]


def english_vocabulary(tokenizers, size: int, language: str = "en") -> tuple[list[str], list[int], dict]:
    """A general LangBridge vocabulary: the `size` most frequent words of `language` (wordfreq's order, from a mix of
    web, subtitle, news, book and Wikipedia text) that every tokenizer spells as one token, as token strings (" the",
    " red", ...), independent of any training captions. Returns (strings, their ids in the first tokenizer, report):
    the report gives how many words of wordfreq's list were examined to find them and the coverage, the share of those
    words every tokenizer has as one token."""
    import wordfreq

    spelled = [string_to_id(tokenizer) for tokenizer in tokenizers]
    chosen, examined = [], 0
    for word in wordfreq.iter_wordlist(language):
        examined += 1
        if all(" " + word in ids for ids in spelled):
            chosen.append(" " + word)
            if len(chosen) == size:
                break
    if not chosen:
        raise ValueError(f"no {language} word is a single token of every tokenizer: the LangBridge vocabulary is empty")
    report = {"vocabulary_size": len(chosen), "words_examined": examined, "coverage": len(chosen) / examined}
    return chosen, [spelled[0][string] for string in chosen], report


def transfer(source: str, to_llm: str, out: str | Path, min_coverage: float = 0.9) -> dict:
    """Move a trained LangBridge or word-bridge model to another LLM without training and save it to `out`.

    Keeps the vision model and the bridge weights; swaps the LLM and its tokenizer. A LangBridge's subset strings are
    re-indexed into the new LLM's ids (strings it lacks as one token are masked out of the coefficients); a word
    bridge's words and layout are re-tokenised (a word is missing when the new tokenizer can only spell it with its
    unknown token). Refuses when fewer than `min_coverage` of the strings exist in the new LLM. Returns a report
    (coverage, missing strings).
    """
    from transformers import AutoConfig, AutoTokenizer

    from modeling_vlap import VLAPConfig, VLAPForConditionalGeneration, VLAPProcessor
    from modeling_vlap.modeling_vlap import language_model_class
    from modeling_vlap.processing_vlap import leading_bos_token_id, word_bridge_ids

    bridge_type = VLAPConfig.from_pretrained(source).bridge_type
    if bridge_type == "linear":
        raise ValueError(
            f"{source} has a linear VLAP bridge: it maps into one LLM's own embedding space and cannot be moved to "
            "another LLM by re-indexing words; only a LangBridge or word-bridge model (bridge_type: langbridge, "
            "words) can be transferred"
        )
    model = VLAPForConditionalGeneration.from_pretrained(source)
    processor = VLAPProcessor.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(to_llm)
    if bridge_type == "words":
        strings = model.config.word_bridge_words
        indexed = word_bridge_ids(tokenizer, strings, model.config.word_bridge_layout)
        unknown = tokenizer.unk_token_id
        missing = [word for word, ids in zip(strings, indexed["word_bridge_word_ids"]) if unknown in ids]
    else:
        ids_of = string_to_id(tokenizer)
        strings = model.config.langbridge_tokens
        indexed = {"langbridge_token_ids": [ids_of.get(string, -1) for string in strings]}
        missing = [string for string, i in zip(strings, indexed["langbridge_token_ids"]) if i < 0]
    found = len(strings) - len(missing)
    coverage = found / len(strings)
    if coverage < min_coverage:
        raise ValueError(
            f"only {found} of {len(strings)} bridge strings ({coverage:.1%}) are words {to_llm} can spell (as one "
            f"token, for a LangBridge), below the minimum coverage {min_coverage:.0%} (missing e.g. {missing[:5]}); "
            "lower --min-coverage to force it"
        )
    text_config = AutoConfig.from_pretrained(to_llm)
    language_model = language_model_class(text_config).from_pretrained(to_llm, dtype=model.dtype)
    config_fields = {name: getattr(model.config, name) for name in VLAPConfig.__annotations__}
    config_fields.update(
        indexed,
        text_config=language_model.config.to_dict(),
        vision_config=model.vision_model.config.to_dict(),
        projection_dim=None,
        prefix_bos_token_id=None if text_config.is_encoder_decoder else leading_bos_token_id(tokenizer),
        bridge_only=False,
        backbones={**(model.config.backbones or {}), "text": {"name_or_path": str(to_llm), "revision": None}},
    )
    if bridge_type == "langbridge" and model.config.langbridge_hidden_size is None:  # the old LLM's width: kept
        config_fields["langbridge_hidden_size"] = model.config.projection_dim
    moved = VLAPForConditionalGeneration(
        VLAPConfig(**config_fields), vision_model=model.vision_model, language_model=language_model
    )
    moved.bridge.load_state_dict(model.bridge.state_dict())
    moved.eval().save_pretrained(out)
    VLAPProcessor(
        image_processor=processor.image_processor, tokenizer=tokenizer, prompt=processor.prompt
    ).save_pretrained(out)
    return {"strings": len(strings), "found": found, "coverage": coverage, "missing": missing, "out": str(out)}
