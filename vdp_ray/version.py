"""The package's version, in one place that imports nothing: the package, shard manifests (``created_by``) and
pyproject.toml (``tool.setuptools.dynamic``) read it here."""

__version__ = "0.1.0"
