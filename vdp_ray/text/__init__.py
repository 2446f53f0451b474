"""Text conditioning. ``encoder`` is what runs with a model (a local text encoder, the stored caption tables, the
caption -> model inputs conversion); ``job`` is the offline `vdp encode-text` Ray Data job and the small local
encoder maker. Importing the package imports neither torch-heavy job code nor Ray."""

from .encoder import (
    EMBEDDINGS,
    INDEX,
    NULL_TEXT,
    TEXT_DIR,
    TextConditioner,
    TextEncoder,
    TextError,
    TextTable,
    drop_text,
    encoder_kind,
    model_kwargs,
    null_like,
)

_JOB = ("encode_text", "make_word_encoder", "split_folders")


def __getattr__(name: str):
    if name in _JOB:  # the offline job reads shards: imported only when asked for
        from . import job

        return getattr(job, name)
    raise AttributeError(f"module 'vdp_ray.text' has no attribute {name!r}")


__all__ = [
    "EMBEDDINGS",
    "INDEX",
    "NULL_TEXT",
    "TEXT_DIR",
    "TextConditioner",
    "TextEncoder",
    "TextError",
    "TextTable",
    "drop_text",
    "encode_text",
    "encoder_kind",
    "make_word_encoder",
    "model_kwargs",
    "null_like",
    "split_folders",
]
