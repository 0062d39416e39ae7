"""A byte-level text dataset for next-token prediction: the tokens are the UTF-8 bytes (vocabulary 256).

Byte-level modelling as in Radford et al., "Language Models are Unsupervised Multitask Learners"
(GPT-2, 2019), Section 2.2, without the BPE merges on top. The text is one byte stream:

- ``root`` a file: its bytes; ``root`` a directory: every regular file under it whose name ends in .txt
  or .md (any case), recursively, in sorted path order, joined with "\\n"; no ``root``: the bundled
  default corpus, the Python Language Reference topics that every Python installation ships as
  ``pydoc_data.topics`` (PSF License 2.0), ``"\\n".join(topics[k] for k in sorted(topics))`` in UTF-8.
  So the default differs between Python versions: ``TextData.source`` records the version and sha256.
- Split, contiguous: of n bytes the first n - round(n * val_fraction) train, the rest validate.
- Windows of context + 1 bytes with stride context: inputs window[:-1], targets window[1:] (each byte
  is a target once). Training windows start at an offset in [0, context) drawn from ``seed``;
  validation windows at 0 whatever the seed.

    stream   |o| w0 (context+1) |            training part            |  v0  |  v1  | ...
    windows      [o, o+c]  [o+c, o+2c]  ...                            [0, c] [c, 2c]  (in the val part)
"""

from __future__ import annotations

import hashlib
import importlib
import os
import platform
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor

SUFFIXES = (".txt", ".md")
DEFAULT_MODULE = "pydoc_data.topics"
DEFAULT_LICENCE = "PSF License Version 2 (Python Software Foundation License)"


@dataclass
class TextData:
    """Byte windows in memory: int64 inputs and next-byte targets, both (N, context), values in [0, 256)."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    in_shape: tuple[int, ...]
    source: dict[str, Any] = field(default_factory=dict)
    name: str = "text"
    num_classes: int = 256
    augment: Optional[Any] = None  # always None: byte windows are not augmented
    train_offset: int = 0  # where the first training window starts in the training part

    def validation(self, dtype: Optional[torch.dtype] = None) -> tuple[Tensor, Tensor]:
        """The validation windows as ``Pipeline.fit``'s ``val_data``; token ids stay int64 whatever ``dtype``."""
        return self.test_x, self.test_y

    def sample(self, n: int, dtype: Optional[torch.dtype] = None) -> Tensor:
        """The first ``n`` training inputs (int64, for partitioning by time or FLOPs); ``dtype`` is ignored."""
        return self.train_x[:n]

    def __repr__(self) -> str:
        return (f"TextData({self.name!r}, train={len(self.train_x)}, test={len(self.test_x)}, "
                f"context={self.in_shape[0]}, bytes={self.source.get('bytes')}, source={self.source.get('name')!r})")


def encode(text: str) -> Tensor:
    """The UTF-8 bytes of ``text`` as an int64 tensor of token ids."""
    if not isinstance(text, str):
        raise TypeError(f"encode takes a str, got {type(text).__name__}: decode bytes first or pass text")
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.int64)


def decode(tokens: Union[Tensor, Sequence[int]]) -> str:
    """Token ids (bytes) back to text; bytes that are not valid UTF-8 become U+FFFD."""
    values = tokens.reshape(-1).tolist() if isinstance(tokens, Tensor) else list(tokens)
    bad = [v for v in values if not 0 <= int(v) < 256]
    if bad:
        raise ValueError(f"decode takes byte tokens in [0, 256), got {bad[0]!r}: pass the ids a byte-level model "
                         f"produced")
    return bytes(int(v) for v in values).decode("utf-8", errors="replace")


def load_text(root: Optional[str] = None, *, context: int = 64, val_fraction: float = 0.1, seed: int = 0) -> TextData:
    """The byte stream of ``root`` (a UTF-8 file or a directory of .txt/.md files; None: the bundled Python
    reference topics) cut into training and validation windows; see the module docstring."""
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        raise ValueError(f"text context must be an integer >= 1 (the window length in bytes), got {context!r}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise ValueError(f"text val_fraction must be a number in (0, 1) (the share of bytes that validates), "
                         f"got {val_fraction!r}")
    data, source = _default_corpus() if root is None else _read(os.path.expanduser(str(root)))
    n = len(data)
    source.update(sha256=hashlib.sha256(data).hexdigest(), bytes=n)
    n_train = n - round(n * val_fraction)
    if n_train < 2 * context or n - n_train < context + 1:  # one window at any offset; one at 0
        raise ValueError(f"{source.get('path', source['name'])}: {n} bytes of text are too few for one training "
                         f"and one validation window at context {context} with val_fraction {val_fraction}: need "
                         f"at least {_bytes_needed(context, val_fraction)} bytes; add text or lower the context")
    stream = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64)
    offset = int(torch.randint(context, (1,), generator=torch.Generator().manual_seed(int(seed))))
    train_x, train_y = _windows(stream[offset:n_train], context)
    test_x, test_y = _windows(stream[n_train:], context)
    return TextData(train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y, in_shape=(context,),
                    source=source, train_offset=offset)


def _windows(stream: Tensor, context: int) -> tuple[Tensor, Tensor]:
    """Windows of context + 1 with stride context: (inputs, targets), each (N, context), N = (len - 1) // context."""
    w = stream.unfold(0, context + 1, context)
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()


def _bytes_needed(context: int, val_fraction: float) -> int:
    """The smallest stream length that splits into >= 2 context training and >= context + 1 validation bytes."""
    # both conditions are monotone in n; they imply n f >= context + 1/2 and n (1 - f) >= 2 context - 1/2
    n = max(3 * context + 1, int((context + 0.5) / val_fraction) - 1, int((2 * context - 0.5) / (1 - val_fraction)) - 1)
    while n - round(n * val_fraction) < 2 * context or round(n * val_fraction) < context + 1:
        n += 1
    return n


def _default_corpus() -> tuple[bytes, dict[str, Any]]:
    module = importlib.import_module(DEFAULT_MODULE)
    topics = module.topics
    data = "\n".join(topics[k] for k in sorted(topics)).encode("utf-8")
    return data, {"name": "Python Language Reference topics", "module": DEFAULT_MODULE,
                  "path": module.__file__, "licence": DEFAULT_LICENCE, "python": platform.python_version()}


def _read(root: str) -> tuple[bytes, dict[str, Any]]:
    if os.path.isfile(root):
        return _read_file(root), {"name": os.path.basename(root), "path": root, "licence": "unknown (user text)"}
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: no such file or directory: pass a UTF-8 text file, or a directory of "
                                f".txt/.md files (or no root for the bundled corpus)")
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files
                   if f.lower().endswith(SUFFIXES) and os.path.isfile(os.path.join(d, f)))
    if not paths:
        raise FileNotFoundError(f"{root}: no .txt or .md files in this directory or below it: add text files "
                                f"there, or pass one text file")
    data = b"\n".join(_read_file(p) for p in paths)
    return data, {"name": os.path.basename(os.path.normpath(root)), "path": root, "paths": paths,
                  "licence": "unknown (user text)"}


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise ValueError(f"{path}: the file is empty: add text to it or remove it")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}: {e.reason}): "
                         f"convert it to UTF-8, e.g. iconv -t UTF-8, or remove it") from None
    return data
