"""Experiments: not installed, run from the repository root (`python -m experiments.demo`, `python -m
experiments.sweep`). The demo worlds (easy-vqa, rendered shapes, Fashion-MNIST), their offline assets, the sweeps
that chose the demo's budget and method, and their settings as YAML under `configs/`. They use the method
(`modeling_vlap`), the library (`vlap`) and `train.py` as any user would."""
