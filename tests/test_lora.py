"""Optional LoRA on the LLM: only the adapters and the bridge train; the merged export reloads with equal outputs."""

import pytest
import torch
from tiny import CAPTIONS, build, images, run_train, write_config
from transformers import AutoModel

from vlap.lora import apply_lora, merge_lora, parse_lora


def test_only_lora_and_bridge_train_and_the_merged_export_reloads(backbones, tmp_path):
    model, processor = build(backbones, "llama")
    peft_model = apply_lora(model, "4,8,q_proj|v_proj")
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all(
        ("lora_" in n and ".language_model." in n) or ".bridge.modules_to_save." in n for n in trainable
    )
    assert any("lora_" in n for n in trainable) and any(".bridge." in n for n in trainable)
    assert not any("vision_model" in n for n in trainable)  # CLIP's q_proj/v_proj are left alone

    batch = processor(images=images(4), text=CAPTIONS)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    frozen = {n: p.clone() for n, p in peft_model.named_parameters() if not p.requires_grad}
    for _ in range(3):
        peft_model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.equal(p, frozen[n]) for n, p in peft_model.named_parameters() if n in frozen)

    peft_model.eval()
    with torch.no_grad():
        expected = peft_model(**batch).logits
        expected_ids = peft_model.generate(**processor(images=images(2)), max_new_tokens=5, do_sample=False)
    merged = merge_lora(peft_model)
    merged.save_pretrained(tmp_path / "merged")
    processor.save_pretrained(tmp_path / "merged")
    reloaded = AutoModel.from_pretrained(tmp_path / "merged", trust_remote_code=True).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).logits, expected, atol=1e-4)
        ids = reloaded.generate(**processor(images=images(2)), max_new_tokens=5, do_sample=False)
    assert torch.equal(ids, expected_ids)


def test_bad_lora_specs_are_rejected(backbones):
    assert parse_lora("8,16,q_proj|v_proj") == (8, 16.0, ["q_proj", "v_proj"])
    for spec in ("8,16", "0,16,q_proj", "8,16,", "a,b,c"):
        with pytest.raises(ValueError, match="r,alpha,targets"):
            parse_lora(spec)
    model, _ = build(backbones, "llama")
    with pytest.raises(ValueError, match="match no module"):
        apply_lora(model, "4,8,nonexistent_proj")


@pytest.mark.slow
def test_train_with_lora_exports_a_plain_model(backbones, caption_folder, tmp_path):
    config = write_config(
        tmp_path / "cfg.yaml",
        backbones,
        caption_folder,
        tmp_path / "run",
        text_model=str(backbones["llama"]),
        lora="4,8,q_proj|v_proj",
        max_steps=4,
        checkpointing_steps=2,
    )
    result = run_train(config)
    assert "LoRA 4,8,q_proj|v_proj" in result.stdout
    exported = AutoModel.from_pretrained(tmp_path / "run" / "final", trust_remote_code=True)
    base, _ = build(backbones, "llama")
    q_proj = "language_model.model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(exported.state_dict()[q_proj], base.state_dict()[q_proj])  # the adapters were merged in
    assert not any("lora" in key for key in exported.state_dict())
