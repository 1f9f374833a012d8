"""Tokenizers, causal-LM construction and value heads."""

from dialogue_rl.models.lm import MODEL_PRESETS, ModelConfig, build_model, resolve_device
from dialogue_rl.models.tokenizer import build_word_tokenizer, load_tokenizer, prepare_tokenizer

__all__ = [
    "MODEL_PRESETS", "ModelConfig", "build_model", "build_word_tokenizer", "load_tokenizer",
    "prepare_tokenizer", "resolve_device",
]
