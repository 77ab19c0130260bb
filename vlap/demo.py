"""`make demo`: the end-to-end run on real offline assets lands with the offline-default issue."""

print("make demo: not yet — the offline default (EfficientNet-Lite0 + SmolLM2-135M on easy-vqa) is issue 4.")
