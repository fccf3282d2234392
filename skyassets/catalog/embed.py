"""Sentence embeddings without PyTorch: a BERT encoder (all-MiniLM-L6-v2 and its kin) in NumPy.

``find()`` embeds a few hundred words per image and one question at a time: a forward pass of a
six-layer encoder is a dozen matrix products, which NumPy's BLAS runs at 0.93x PyTorch's speed on a
CPU (``bench/embed.py``). Reading the model's own files (``model.safetensors``, ``tokenizer.json``,
the sentence-transformers pooling settings) with ``safetensors`` and ``tokenizers`` gives the same
vectors as ``sentence-transformers`` for about 100 MB of install instead of about 2.5 GB, so the
embedding ranking is available, and tested, wherever skyassets is.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

BATCH = 32
"""Texts per forward pass: sorted by length first, so a batch pads to its own longest text."""


class UnsupportedModel(ValueError):
    """A model folder this encoder cannot run (not a BERT encoder with mean or CLS pooling)."""


def supports(folder: Path) -> bool:
    """Whether ``folder`` holds a BERT sentence model this encoder runs (the rest needs PyTorch)."""
    try:
        _settings(folder)
    except (OSError, ValueError):
        return False
    return True


def _settings(folder: Path) -> dict[str, Any]:
    """The model's shape, pooling and sequence limit, from its own configuration files."""
    config = json.loads((folder / "config.json").read_text())
    if config.get("model_type") != "bert" or config.get("position_embedding_type", "absolute") != "absolute":
        raise UnsupportedModel(f"{folder}: model_type {config.get('model_type')!r} is not a BERT encoder")
    if config.get("hidden_act") != "gelu":
        raise UnsupportedModel(f"{folder}: activation {config.get('hidden_act')!r}, not gelu")
    for name in ("model.safetensors", "tokenizer.json"):
        if not (folder / name).is_file():
            raise UnsupportedModel(f"{folder}: no {name}")
    pooling = {"pooling_mode_mean_tokens": True}
    if (folder / "1_Pooling" / "config.json").is_file():
        pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    modes = [k for k, v in pooling.items() if k.startswith("pooling_mode_") and v is True]
    if modes not in (["pooling_mode_mean_tokens"], ["pooling_mode_cls_token"]):
        raise UnsupportedModel(f"{folder}: pooling {modes}, not mean or CLS")
    limit = int(config.get("max_position_embeddings", 512))
    if (folder / "sentence_bert_config.json").is_file():
        bert = json.loads((folder / "sentence_bert_config.json").read_text())
        limit = min(limit, int(bert.get("max_seq_length", limit)))
    modules = (folder / "modules.json").read_text() if (folder / "modules.json").is_file() else ""
    return {
        "heads": int(config["num_attention_heads"]),
        "layers": int(config["num_hidden_layers"]),
        "eps": float(config.get("layer_norm_eps", 1e-12)),
        "mean": modes == ["pooling_mode_mean_tokens"],
        "normalize": "Normalize" in modules or not modules,
        "max_length": limit,
    }


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    centred = x - mean
    var = np.mean(centred * centred, -1, keepdims=True)
    return centred / np.sqrt(var + eps) * weight + bias


def _gelu(x: np.ndarray) -> np.ndarray:
    """BERT's exact GELU, x Φ(x) = max(x, 0) - |x| (1 - erf(|x| / √2)) / 2, with 1 - erf from
    Abramowitz & Stegun 7.1.26 (error under 1.5e-7, below float32's resolution of the values):
    in place, a few passes over the array, against twice the time for ``scipy.special.erf``."""
    a = np.abs(x)
    z = a * np.float32(1 / np.sqrt(2.0))
    t = z * np.float32(0.3275911)
    t += 1
    np.reciprocal(t, out=t)
    poly = t * np.float32(1.061405429)
    for c in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly += np.float32(c)
        poly *= t
    np.square(z, out=z)
    np.negative(z, out=z)
    np.exp(z, out=z)
    poly *= z  # 1 - erf(|x| / √2)
    poly *= a
    poly *= np.float32(0.5)
    out = np.maximum(x, 0)
    out -= poly
    return out


@dataclass
class BertEncoder:
    """A sentence-transformers BERT model folder, run in NumPy; ``encode`` gives unit rows."""

    path: Path
    name: str = ""
    _weights: dict[str, np.ndarray] | None = field(default=None, repr=False)
    _tokenizer: Any = field(default=None, repr=False)
    _settings: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.name = self.name or self.path.name
        self._settings = _settings(self.path)

    def _load(self) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        raw = load_file(str(self.path / "model.safetensors"))
        # some exports prefix every name with the architecture ("bert.")
        raw = {k.removeprefix("bert."): v.astype(np.float32, copy=False) for k, v in raw.items()}
        weights = {k: v for k, v in raw.items() if k.startswith("embeddings.")}
        for layer in range(self._settings["layers"]):
            p = f"encoder.layer.{layer}."
            # (in, out) and contiguous: BLAS runs x @ W twice as fast as x @ W.T; Q, K and V in one product
            weights[p + "qkv.w"] = np.ascontiguousarray(np.concatenate(
                [raw[p + f"attention.self.{n}.weight"] for n in ("query", "key", "value")]).T)
            weights[p + "qkv.b"] = np.concatenate([raw[p + f"attention.self.{n}.bias"]
                                                   for n in ("query", "key", "value")])
            for name, short in (("attention.output.dense", "attn"), ("intermediate.dense", "up"),
                                ("output.dense", "down")):
                weights[p + short + ".w"] = np.ascontiguousarray(raw[p + name + ".weight"].T)
                weights[p + short + ".b"] = raw[p + name + ".bias"]
            for name, short in (("attention.output.LayerNorm", "ln1"), ("output.LayerNorm", "ln2")):
                weights[p + short + ".w"] = raw[p + name + ".weight"]
                weights[p + short + ".b"] = raw[p + name + ".bias"]
        self._weights = weights
        tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        tokenizer.enable_truncation(max_length=self._settings["max_length"])
        tokenizer.no_padding()
        self._tokenizer = tokenizer

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if self._weights is None:
            self._load()
        encodings = self._tokenizer.encode_batch(list(texts))
        out = np.zeros((len(encodings), self._weights["embeddings.word_embeddings.weight"].shape[1]), np.float32)
        order = np.argsort([len(e.ids) for e in encodings], kind="stable")
        for start in range(0, len(order), BATCH):
            picked = order[start:start + BATCH]
            width = max(len(encodings[i].ids) for i in picked)
            ids = np.zeros((len(picked), width), np.int64)
            types = np.zeros((len(picked), width), np.int64)
            mask = np.zeros((len(picked), width), np.float32)
            for row, i in enumerate(picked):
                n = len(encodings[i].ids)
                ids[row, :n] = encodings[i].ids
                types[row, :n] = encodings[i].type_ids
                mask[row, :n] = 1.0
            out[picked] = self._forward(ids, types, mask)
        return out

    def _forward(self, ids: np.ndarray, types: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The encoder on one padded batch; hidden states kept as (tokens, hidden) for the dense layers."""
        w, s = self._weights, self._settings
        batch, width = ids.shape
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:width]
             + w["embeddings.token_type_embeddings.weight"][types])
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], s["eps"])
        hidden = x.shape[-1]
        x = x.reshape(batch * width, hidden)
        heads, size = s["heads"], hidden // s["heads"]
        blocked = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :]  # padding gets no attention
        scale = np.float32(1.0 / np.sqrt(size))
        for layer in range(s["layers"]):
            p = f"encoder.layer.{layer}."
            qkv = (x @ w[p + "qkv.w"] + w[p + "qkv.b"]).reshape(batch, width, 3, heads, size)
            q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
            scores = q @ k.transpose(0, 1, 3, 2)
            scores *= scale
            scores += blocked
            scores -= scores.max(-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch * width, hidden)
            x = _layer_norm(context @ w[p + "attn.w"] + w[p + "attn.b"] + x, w[p + "ln1.w"], w[p + "ln1.b"], s["eps"])
            inner = _gelu(x @ w[p + "up.w"] + w[p + "up.b"])
            x = _layer_norm(inner @ w[p + "down.w"] + w[p + "down.b"] + x, w[p + "ln2.w"], w[p + "ln2.b"], s["eps"])
        x = x.reshape(batch, width, hidden)
        if s["mean"]:
            pooled = (x * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        else:
            pooled = x[:, 0]
        if s["normalize"]:
            pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled.astype(np.float32)
