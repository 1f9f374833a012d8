"""Causal language models: GPT-2 shaped presets trained from scratch, or any HF causal LM."""

from __future__ import annotations

import functools
import inspect
import logging
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, PreTrainedModel

log = logging.getLogger(__name__)


@dataclass
class ModelConfig:
    """Model preset. ``pretrained`` (a hub name or local path) overrides the shape fields."""

    name: str = "tiny"
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    n_positions: int = 512
    dropout: float = 0.0
    pretrained: str | None = None


MODEL_PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig("tiny", n_layer=4, n_head=4, n_embd=128, n_positions=512),
    "small": ModelConfig("small", n_layer=6, n_head=8, n_embd=256, n_positions=1024),
}


def resolve_device(device: str) -> torch.device:
    """``"auto"`` picks CUDA when present, else CPU; otherwise ``torch.device(device)``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available; use device=cpu or device=auto")
    return dev


def build_model(cfg: ModelConfig, tokenizer) -> PreTrainedModel:
    """A causal LM for ``tokenizer``: from scratch (GPT-2 config) or ``cfg.pretrained``.

    A pretrained model's embeddings are resized when the tokenizer gained tokens.
    Nothing is downloaded unless the name is not a local path and the hub is reachable.
    """
    if cfg.pretrained:
        model = AutoModelForCausalLM.from_pretrained(cfg.pretrained)
        if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
        return model
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        unk_token_id=tokenizer.unk_token_id,
        # the same tanh-approximate GELU as GPT-2's "gelu_new", as one fused kernel
        # (the Python "gelu_new" was ~20% of a tiny model's forward time on CPU)
        activation_function="gelu_pytorch_tanh",
    )
    model = GPT2LMHeadModel(config)
    log.info("built %s model: %.2fM parameters", cfg.name, n_params(model) / 1e6)
    return model


def n_params(model: torch.nn.Module, non_embedding: bool = False) -> int:
    """Parameter count; ``non_embedding`` leaves out the position embeddings, as nanoGPT
    does (the token embedding stays: tied to the output layer, it is a matmul per token)."""
    n = sum(p.numel() for p in model.parameters())
    if non_embedding:
        n -= sum(p.numel() for name, p in model.named_parameters() if _is_position_embedding(name))
    return n


def _is_position_embedding(name: str) -> bool:
    return name.endswith(("wpe.weight", "position_embeddings.weight", "embed_positions.weight"))


@functools.cache
def _cache_kwarg_of(forward_cls: type) -> str:
    params = inspect.signature(forward_cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwargs(model: torch.nn.Module, cache: Any) -> dict[str, Any]:
    """``{<name>: cache}`` for ``model``'s forward: ``cache`` in transformers >= 5.2x,
    ``past_key_values`` before (deprecated there, removed in 5.40)."""
    return {_cache_kwarg_of(type(model)): cache}


def output_cache(out: Any) -> Any:
    """The KV cache of a model output, under either name (``cache`` / ``past_key_values``)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)
