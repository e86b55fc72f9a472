"""ALADIN: fine-grained alignment (teacher) distilled into global embeddings (student)."""

__version__ = "0.1.0"
