"""`vdp encode-text`: the offline Ray Data job that embeds every distinct caption of a split once and stores the
table training reads (``<split>/text/embeddings.safetensors`` + ``index.json``), and ``make_word_encoder``, a small
local encoder for machines without a pretrained one. Nothing here runs at inference time (``text/encoder.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..data.pipeline import list_shards, split_folders
from ..data.shards import ShardError
from ..options import OptionError
from .encoder import EMBEDDINGS, INDEX, NULL_TEXT, TEXT_DIR, TextEncoder, TextError, encoder_kind


class _EncodeBatch:
    """Ray Data actor: one loaded text encoder, batches of captions in, embeddings out."""

    def __init__(self, path: str, max_tokens: int, device: str = "cpu"):
        self.encoder = TextEncoder(path, max_tokens, device)  # "cuda" only in an actor that reserved a GPU

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


def encode_text(
    paths: list[str],
    encoder: str,
    *,
    max_tokens: int = 77,
    batch_size: int = 64,
    workers: int = 1,
    make_encoder: bool = False,
    log=print,
) -> dict[str, dict]:
    """Embed every distinct caption of each split once (a Ray Data job: read shards -> captions -> encoder
    actors) and store them in ``<split>/text/``. Returns {split folder: summary}. ``make_encoder``: first
    write ``make_word_encoder`` over all the splits' captions to ``encoder`` (a new folder)."""
    import time

    import ray
    from safetensors.torch import save_file

    from ..fsutil import atomic_write
    from ..raytools import cluster_has_gpus, gpu_placement, init_ray

    for name, value in (("max_tokens", max_tokens), ("batch_size", batch_size), ("workers", workers)):
        if value < 1:
            raise OptionError(name, f"must be >= 1, got {value}")
    if make_encoder and (Path(encoder) / "config.json").exists():
        raise TextError(f"--make-encoder: {encoder} already holds a model; give a new folder")
    if not make_encoder:
        encoder_kind(encoder)  # refuse a bad encoder before any Ray work
    try:
        folders = split_folders(paths)
    except ShardError as exc:
        raise TextError(str(exc)) from None
    init_ray()
    device, gpus = gpu_placement("auto", None, cluster_has_gpus)  # a GPU per encoder actor where there are any
    per_split = {}
    for folder in folders:
        started = time.monotonic()
        ds = ray.data.read_webdataset(list_shards(str(folder)), decoder=None, suffixes=["json"])
        per_split[folder] = (
            sorted({r["caption"] for r in ds.flat_map(_captions_of).take_all()} - {NULL_TEXT}),
            time.monotonic() - started,
        )
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
            _EncodeBatch,
            batch_size=batch_size,
            batch_format="numpy",
            concurrency=workers,
            num_gpus=gpus,
            fn_constructor_kwargs={"path": str(Path(encoder).resolve()), "max_tokens": max_tokens, "device": device},
        )
        rows = {r["caption"]: r for r in table.take_all()}
        stack = {k: torch.from_numpy(np.stack([np.asarray(rows[c][k]) for c in ordered])) for k in ("tokens", "pooled")}
        mask = torch.from_numpy(np.stack([np.asarray(rows[c]["mask"]) for c in ordered]).astype(np.uint8))
        out = folder / TEXT_DIR
        out.mkdir(exist_ok=True)
        tmp = out / (EMBEDDINGS + ".tmp")
        save_file(
            {"tokens": stack["tokens"].contiguous(), "mask": mask.contiguous(), "pooled": stack["pooled"].contiguous()},
            str(tmp),
        )
        tmp.replace(out / EMBEDDINGS)
        meta = {
            "encoder": str(Path(encoder).resolve()),
            "kind": kind,
            "dim": int(stack["tokens"].shape[-1]),
            "max_tokens": max_tokens,
            "count": len(ordered),
            "captions": ordered,
        }
        atomic_write(out / INDEX, json.dumps(meta, indent=1))
        summaries[str(folder)] = {
            "captions": len(ordered),
            "dim": meta["dim"],
            "seconds": round(time.monotonic() - started, 2),
        }
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
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        model_max_length=77,
    )
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(path)
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=layers,
        num_attention_heads=max(1, dim // 32),
        max_position_embeddings=77,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
        projection_dim=dim,
    )
    torch.manual_seed(seed)
    CLIPTextModel(config).save_pretrained(path)
    return path
