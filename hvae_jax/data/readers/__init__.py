"""Readers that turn rating and interaction files in the common public formats into `Interactions`, plus titles.

`read_interactions` finds the format (`registry`), checks the whole file once (`textfile`), parses it with Arrow
(`formats` for text, `arrays` for .npy and Parquet) and numbers the ids (`columns`); `read_titles` reads item titles.
"""

from hvae_jax.data.interactions import DataFormatError
from hvae_jax.data.readers.errors import decode_text, line_error
from hvae_jax.data.readers.registry import FORMATS, detect_format, read_interactions
from hvae_jax.data.readers.titles import read_titles

__all__ = ["FORMATS", "DataFormatError", "decode_text", "detect_format", "line_error", "read_interactions",
           "read_titles"]
