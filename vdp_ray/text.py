"""Text conditioning: a local `transformers` text encoder and the caption embeddings stored with the shards.

    enc = TextEncoder("/models/clip-vit-large-patch14")      # a folder: config.json, weights, tokenizer
    out = enc.encode(["a 3 moving left"])                     # tokens (N, L, D), mask (N, L), pooled (N, D)

Nothing is ever downloaded: models load with ``local_files_only``. CLIP text models (pooled = the EOS token's
projection-free hidden state, as CLIP defines it) and T5 encoders (pooled = the mean over real tokens) are
supported. ``vdp encode-text`` embeds every distinct caption of a split once and stores them in
``<split>/text/`` (``embeddings.safetensors`` + ``index.json``); training looks captions up there. Row 0 is
always the empty caption: the null text that text dropout trains and text guidance contrasts with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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
        raise TextError(f"text encoder {path}: no config.json (expected a local transformers model folder; "
                        "nothing is downloaded)")  # fmt: skip
    model_type = json.loads(config.read_text()).get("model_type")
    if model_type in CLIP_TYPES:
        return "clip"
    if model_type in T5_TYPES:
        return "t5"
    raise TextError(f"text encoder {path}: model_type {model_type!r} is not supported; expected a CLIP text model "
                    f"{CLIP_TYPES} or a T5 encoder {T5_TYPES}")  # fmt: skip


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
        batch = self.tokenizer(list(captions), padding="max_length", truncation=True, max_length=self.max_tokens,
                               return_tensors="pt")  # fmt: skip
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
            raise TextError(f"{split_dir}: no caption embeddings ({TEXT_DIR}/{EMBEDDINGS}); run "
                            f"`vdp encode-text {split_dir} --encoder PATH` first")  # fmt: skip
        meta = json.loads((folder / INDEX).read_text())
        tensors = load_file(str(folder / EMBEDDINGS))
        rows = {c: i for i, c in enumerate(meta["captions"])}
        return cls(rows, tensors["tokens"], tensors["mask"].bool(), tensors["pooled"], meta)

    def lookup(self, captions: list[str], device=None, dtype=torch.float32) -> dict[str, torch.Tensor]:
        """Embeddings of a batch of captions ("" = null text); a caption not in the table is an error."""
        missing = [c for c in captions if c not in self.rows]
        if missing:
            raise TextError(f"caption {missing[0]!r} has no stored embedding (shards changed after "
                            "`vdp encode-text`? run it again)")  # fmt: skip
        idx = torch.tensor([self.rows[c] for c in captions])
        return {
            "text_tokens": self.tokens[idx].to(device, dtype),
            "text_mask": self.mask[idx].to(device),
            "text_pooled": self.pooled[idx].to(device, dtype),
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


# ------------------------------------------------------------------------------------------ vdp encode-text
def split_folders(paths: list[str]) -> list[Path]:
    """Split folders (holding a manifest.json and shards) under the given shard roots or split folders."""
    from .data.shards import MANIFEST

    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise TextError(f"{path}: no such shard folder")
        top = path / MANIFEST
        manifest = json.loads(top.read_text()) if top.is_file() else {}
        if "splits" in manifest:
            found += [path / s for s in manifest["splits"]]
        elif top.is_file() or any(path.glob("*.tar")):
            found.append(path)
        else:
            raise TextError(f"{path}: not a folder written by `vdp shard` (no manifest.json or .tar shards)")
    return found


class _EncodeBatch:
    """Ray Data actor: one loaded text encoder, batches of captions in, embeddings out."""

    def __init__(self, path: str, max_tokens: int):
        self.encoder = TextEncoder(path, max_tokens, "cuda" if torch.cuda.is_available() else "cpu")

    def __call__(self, batch: dict) -> dict:
        captions = [str(c) for c in batch["caption"]]
        out = self.encoder.encode(captions)
        return {
            "caption": np.asarray(captions, dtype=object),
            "tokens": out["tokens"].half().numpy(),
            "mask": out["mask"].numpy(),
            "pooled": out["pooled"].half().numpy(),
        }


def _captions_of(row: dict) -> list[dict]:
    meta = json.loads(row["json"]) if isinstance(row["json"], (bytes, str)) else row["json"]
    return [{"caption": str(c)} for c in (meta.get("captions") or [])]


def encode_text(paths: list[str], encoder: str, *, max_tokens: int = 77, batch_size: int = 64, workers: int = 1,
                make_encoder: bool = False, log=print) -> dict[str, dict]:  # fmt: skip
    """Embed every distinct caption of each split once (a Ray Data job: read shards -> captions -> encoder
    actors) and store them in ``<split>/text/``. Returns {split folder: summary}. ``make_encoder``: first
    write ``make_word_encoder`` over all the splits' captions to ``encoder`` (a new folder)."""
    import time

    import ray
    from safetensors.torch import save_file

    from .data.pipeline import list_shards
    from .fsutil import atomic_write
    from .raytools import init_ray

    if make_encoder and (Path(encoder) / "config.json").exists():
        raise TextError(f"--make-encoder: {encoder} already holds a model; give a new folder")
    if not make_encoder:
        encoder_kind(encoder)  # refuse a bad encoder before any Ray work
    folders = split_folders(paths)
    init_ray()
    per_split = {}
    for folder in folders:
        started = time.monotonic()
        ds = ray.data.read_webdataset(list_shards(str(folder)), decoder=None, suffixes=["json"])
        per_split[folder] = (sorted({r["caption"] for r in ds.flat_map(_captions_of).take_all()} - {NULL_TEXT}),
                             time.monotonic() - started)  # fmt: skip
    if make_encoder:
        vocabulary = sorted({c for captions, _ in per_split.values() for c in captions})
        if not vocabulary:
            raise TextError(f"no captions in {', '.join(map(str, folders))} (shard with captions first)")
        make_word_encoder(encoder, vocabulary)
        log(f"wrote a small random CLIP text encoder to {encoder}")
    kind = encoder_kind(encoder)
    summaries = {}
    for folder, (captions, read_s) in per_split.items():
        started = time.monotonic() - read_s
        ordered = [NULL_TEXT, *captions]
        log(f"{folder}: {len(captions)} distinct caption(s); encoding with {encoder} ({kind})")
        table = ray.data.from_items([{"caption": c} for c in ordered]).map_batches(
            _EncodeBatch, batch_size=batch_size, batch_format="numpy", concurrency=workers,
            fn_constructor_kwargs={"path": str(Path(encoder).resolve()), "max_tokens": max_tokens},
        )  # fmt: skip
        rows = {r["caption"]: r for r in table.take_all()}
        stack = {k: torch.from_numpy(np.stack([np.asarray(rows[c][k]) for c in ordered])) for k in ("tokens", "pooled")}
        mask = torch.from_numpy(np.stack([np.asarray(rows[c]["mask"]) for c in ordered]).astype(np.uint8))
        out = folder / TEXT_DIR
        out.mkdir(exist_ok=True)
        tmp = out / (EMBEDDINGS + ".tmp")
        save_file({"tokens": stack["tokens"].contiguous(), "mask": mask.contiguous(),
                   "pooled": stack["pooled"].contiguous()}, str(tmp))  # fmt: skip
        tmp.replace(out / EMBEDDINGS)
        meta = {"encoder": str(Path(encoder).resolve()), "kind": kind, "dim": int(stack["tokens"].shape[-1]),
                "max_tokens": max_tokens, "count": len(ordered), "captions": ordered}  # fmt: skip
        atomic_write(out / INDEX, json.dumps(meta, indent=1))
        summaries[str(folder)] = {"captions": len(ordered), "dim": meta["dim"],
                                  "seconds": round(time.monotonic() - started, 2)}  # fmt: skip
    return summaries


# ------------------------------------------------------------------------------------------ a small local encoder
def make_word_encoder(path: str | Path, captions: list[str], dim: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A small randomly initialised CLIP text model with a word-level tokenizer over the captions' words,
    saved as a normal transformers folder. For tests and CPU runs where no pretrained encoder is on disk: its
    embeddings tell captions apart but carry no prior meaning (a real CLIP/T5 folder does)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

    special = ["<pad>", "<unk>", "<bos>", "<eos>"]
    splitter = pre_tokenizers.Whitespace()
    words = sorted({w for c in captions for w, _ in splitter.pre_tokenize_str(c.lower())})
    vocab = {w: i for i, w in enumerate(special + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = splitter
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 2), ("<eos>", 3)]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", model_max_length=77)  # fmt: skip
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(path)
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=dim, intermediate_size=2 * dim, num_hidden_layers=layers,
                            num_attention_heads=max(1, dim // 32), max_position_embeddings=77, pad_token_id=0,
                            bos_token_id=2, eos_token_id=3, projection_dim=dim)  # fmt: skip
    torch.manual_seed(seed)
    CLIPTextModel(config).save_pretrained(path)
    return path
