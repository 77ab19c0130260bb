"""Optional LoRA on the LLM's attention projections (peft), for `train.py --lora r,alpha,targets`.

Off by default: the method's point is a frozen LLM. The adapters are scoped to the language model by a regex (a bare
["q_proj", "v_proj"] would also hit the vision tower's attention) and the bridge stays trainable through
`modules_to_save`. `merge_lora` folds the adapters into the LLM weights before export, so the saved model loads
through AutoModel / pipeline without peft.
"""

import re


def parse_lora(spec: str) -> tuple[int, float, list[str]]:
    """ "8,16,q_proj|v_proj" -> (8, 16.0, ["q_proj", "v_proj"])."""
    try:
        rank, alpha, targets = spec.split(",")
        names = [name.strip() for name in targets.split("|") if name.strip()]
        if int(rank) < 1 or not names:
            raise ValueError
        return int(rank), float(alpha), names
    except ValueError:
        raise ValueError(f"--lora {spec!r}: expected r,alpha,targets such as 8,16,q_proj|v_proj") from None


def apply_lora(model, spec: str):
    """Wrap `model` (VLAPForConditionalGeneration) with LoRA on `language_model.*.<target>` modules only."""
    from peft import LoraConfig, get_peft_model

    rank, alpha, targets = parse_lora(spec)
    pattern = rf"language_model\..*\.({'|'.join(targets)})"
    matched = [name for name, _ in model.named_modules() if re.fullmatch(pattern, name)]
    if not matched:
        raise ValueError(f"--lora targets {targets} match no module of the language model")
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=pattern, modules_to_save=["bridge"], lora_dropout=0.0)
    return get_peft_model(model, config)


def merge_lora(model):
    """A PeftModel -> the plain VLAP model with the adapters merged into the LLM and the trained bridge in place."""
    from peft import PeftModel

    return model.merge_and_unload() if isinstance(model, PeftModel) else model
