"""Text at run time: a local `transformers` text encoder, the caption embeddings stored beside shards, and the one
place a caption becomes the network's text inputs.

    enc = TextEncoder("/models/clip-vit-large-patch14")      # a folder: config.json, weights, tokenizer
    out = enc.encode(["a 3 moving left"])                     # tokens (N, L, D), mask (N, L), pooled (N, D)
    text = TextConditioner.of_encoder(enc)                    # or .of_tables(split folders) in training
    kwargs, null = text(["a 3 moving left"], device, dtype)  # the DiT's text inputs and the null text's

Nothing is ever downloaded: models load with ``local_files_only``. CLIP text models (pooled = the EOS token's
projection-free hidden state, as CLIP defines it) and T5 encoders (pooled = the mean over real tokens) are
supported. Row 0 of a stored table is always the empty caption: the null text that text dropout trains and
text guidance contrasts with. The offline job that writes the tables is ``text/job.py`` (`vdp encode-text`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

TEXT_DIR = "text"
EMBEDDINGS = "embeddings.safetensors"
INDEX = "index.json"
NULL_TEXT = ""
CLIP_TYPES = ("clip", "clip_text_model")
T5_TYPES = ("t5", "mt5", "umt5")


class TextError(Exception):
    """A text encoder or caption table that cannot be used; the message names the path and the fix."""


def encoder_kind(path: str | Path) -> str:
    """'clip' or 't5' from the folder's config.json, or a TextError naming what is missing."""
    path = Path(path)
    config = path / "config.json"
    if not config.is_file():
        raise TextError(
            f"text encoder {path}: no config.json (expected a local transformers model folder; nothing is downloaded)"
        )
    model_type = json.loads(config.read_text()).get("model_type")
    if model_type in CLIP_TYPES:
        return "clip"
    if model_type in T5_TYPES:
        return "t5"
    raise TextError(
        f"text encoder {path}: model_type {model_type!r} is not supported; expected a CLIP text model "
        f"{CLIP_TYPES} or a T5 encoder {T5_TYPES}"
    )


class TextEncoder:
    """A frozen text model from a local folder; ``encode`` gives token embeddings, their mask and a pooled vector."""

    def __init__(self, path: str | Path, max_tokens: int = 77, device: str | torch.device = "cpu"):
        from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

        self.path = Path(path)
        self.kind = encoder_kind(self.path)
        self.max_tokens = max_tokens
        self.device = torch.device(device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            cls = CLIPTextModel if self.kind == "clip" else T5EncoderModel
            self.model = cls.from_pretrained(self.path, local_files_only=True).to(self.device).eval()
        except (OSError, ValueError) as exc:
            raise TextError(f"text encoder {self.path}: cannot load the model or its tokenizer: {exc}") from None
        self.model.requires_grad_(False)
        self.dim = int(self.model.config.hidden_size if self.kind == "clip" else self.model.config.d_model)

    @torch.no_grad()
    def encode(self, captions: list[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(
            list(captions), padding="max_length", truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )
        ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        out = self.model(input_ids=ids, attention_mask=mask)
        tokens = out.last_hidden_state.float()
        if self.kind == "clip" and getattr(out, "pooler_output", None) is not None:
            pooled = out.pooler_output.float()
        else:
            weights = mask[..., None].float()
            pooled = (tokens * weights).sum(1) / weights.sum(1).clamp(min=1)
        return {"tokens": tokens.cpu(), "mask": mask.bool().cpu(), "pooled": pooled.cpu()}


@dataclass
class TextTable:
    """Caption -> (tokens, mask, pooled), as `vdp encode-text` stored them for one split."""

    rows: dict[str, int]
    tokens: torch.Tensor  # (N, L, D) float16
    mask: torch.Tensor  # (N, L) bool
    pooled: torch.Tensor  # (N, D) float16
    meta: dict

    @classmethod
    def load(cls, split_dir: str | Path) -> TextTable:
        from safetensors.torch import load_file

        folder = Path(split_dir) / TEXT_DIR
        if not (folder / INDEX).is_file() or not (folder / EMBEDDINGS).is_file():
            raise TextError(
                f"{split_dir}: no caption embeddings ({TEXT_DIR}/{EMBEDDINGS}); run "
                f"`vdp encode-text {split_dir} --encoder PATH` first"
            )
        meta = json.loads((folder / INDEX).read_text())
        tensors = load_file(str(folder / EMBEDDINGS))
        rows = {c: i for i, c in enumerate(meta["captions"])}
        return cls(rows, tensors["tokens"], tensors["mask"].bool(), tensors["pooled"], meta)

    def lookup(self, captions: list[str], device=None, dtype=torch.float32) -> dict[str, torch.Tensor]:
        """Embeddings of a batch of captions ("" = null text); a caption not in the table is an error."""
        missing = [c for c in captions if c not in self.rows]
        if missing:
            raise TextError(
                f"caption {missing[0]!r} has no stored embedding (shards changed after `vdp encode-text`? run it again)"
            )
        idx = torch.tensor([self.rows[c] for c in captions])
        return model_kwargs(self.tokens[idx], self.mask[idx], self.pooled[idx], device, dtype)


def model_kwargs(tokens, mask, pooled, device=None, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """A caption's embeddings as the DiT's keyword inputs: the one place their names are written."""
    return {
        "text_tokens": tokens.to(device, dtype),
        "text_mask": mask.to(device),
        "text_pooled": pooled.to(device, dtype),
    }


def null_like(text: dict[str, torch.Tensor], null: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The null text's embeddings (one row, as ``lookup([""])`` gives) repeated to the batch of ``text``."""
    n = text["text_tokens"].shape[0]
    return {k: v[:1].expand(n, *v.shape[1:]).to(text[k]) for k, v in null.items()}


def drop_text(text: dict[str, torch.Tensor], null: dict[str, torch.Tensor], p: float, generator=None):
    """Each sample's text replaced by the null text with probability p (classifier-free guidance training)."""
    if p <= 0:
        return text
    n = text["text_tokens"].shape[0]
    drop = torch.rand(n, generator=generator) < p
    nulls = null_like(text, null)
    out = {}
    for k, v in text.items():
        d = drop.to(v.device).view(n, *([1] * (v.ndim - 1)))
        out[k] = torch.where(d, nulls[k], v)
    return out


class TextConditioner:
    """Captions -> the network's text inputs and the null text's, for a batch: from the stored tables (training:
    each split's captions were embedded once by `vdp encode-text`) or from a live encoder (prompts at inference).
    The last batch's embeddings are kept: every window of a roll-out asks for the same prompts."""

    def __init__(self, embed):
        self._embed = embed  # list of captions -> model kwargs (CPU)
        self._last: tuple[tuple[str, ...], dict] | None = None
        self._null = embed([NULL_TEXT])

    @classmethod
    def of_tables(cls, split_folders: list) -> TextConditioner:
        tables = [TextTable.load(folder) for folder in split_folders]  # training first, then validation

        def embed(captions: list[str]) -> dict:
            for table in tables:
                if all(c in table.rows for c in captions):
                    return table.lookup(captions)
            missing = next(c for c in captions if not any(c in t.rows for t in tables))
            raise TextError(f"caption {missing!r} has no stored embedding: run `vdp encode-text` on the shards again")

        return cls(embed)

    @classmethod
    def of_encoder(cls, encoder: TextEncoder) -> TextConditioner:
        def embed(captions: list[str]) -> dict:
            out = encoder.encode(captions)
            return model_kwargs(out["tokens"], out["mask"], out["pooled"])

        return cls(embed)

    def __call__(self, captions: list[str], device=None, dtype=torch.float32, drop: float = 0.0):
        """(model kwargs, null kwargs) for one caption per clip ("" = the null text); ``drop``: the chance that a
        clip sees the null text instead (training)."""
        key = tuple(captions)
        if self._last is None or self._last[0] != key:
            self._last = (key, self._embed(list(captions)))
        text = {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in self._last[1].items()}
        null = null_like(text, self._null)
        return drop_text(text, null, drop), null
