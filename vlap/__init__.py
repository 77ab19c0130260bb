"""The installable library around the method (`modeling_vlap`): the uses as functions (`tasks`), evaluation and
metrics, training data and the frozen-feature cache, LangBridge vocabularies, LoRA, the `vlap` CLI and the web demo."""
