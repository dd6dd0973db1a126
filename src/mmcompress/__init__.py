"""mmcompress: compress multimodal item embeddings into compact, searchable codes."""

__version__ = "0.1.0"
