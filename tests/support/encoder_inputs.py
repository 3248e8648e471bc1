"""Prompts and settings the encoder-backend tests share (the onnx and openvino backends against torch)."""

from __future__ import annotations

from barp_sidecar.policy.device import DevicePlacement
from barp_sidecar.policy.encoder import BUILTIN_MODEL, EncoderSettings

# Lengths from 4 words to a 300-word context that the 256-token tail truncation cuts: one padded batch of
# very different lengths exercises padding and truncation together.
PROMPTS = [
    "What is 2 + 2?",
    "Write a Python function that merges two sorted lists and explain its complexity.",
    "context " * 300 + "Which planet is the largest?",
    "Translate 'good morning' into French, German and Italian.",
]
SETTINGS = EncoderSettings(model=BUILTIN_MODEL, max_seq_length=256, truncation="tail", device="cpu")
CPU = DevicePlacement("cpu", False)
