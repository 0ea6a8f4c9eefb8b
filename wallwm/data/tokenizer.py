"""The caption tokenizer: a small byte-level BPE trained on the dataset's own captions.

Byte-level, because captions come from templates, VLMs and people in any language: every
string maps to bytes the vocabulary holds (the 256 byte symbols are always in it), so
Chinese or emoji round-trip through encode/decode and `<unk>` never appears. No normaliser
for the same reason (it would change what decodes). Training is deterministic given the same
texts in the same order, so a dataset build that re-trains it gets the same file.

Special tokens, in id order 0..4: ``<pad> <bos> <eos> <unk> <sep>``. A plain ``tok.encode``
wraps the text in ``<bos> ... <eos>``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from wallwm.util.atomic import atomic_write_text

PAD, BOS, EOS, UNK, SEP = "<pad>", "<bos>", "<eos>", "<unk>", "<sep>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, SEP)
MIN_VOCAB = 256 + len(SPECIAL_TOKENS)


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 2048, min_frequency: int = 1
) -> Tokenizer:
    """Train a byte-level BPE on `texts` (the vocabulary may end smaller on a small corpus)."""
    if vocab_size < MIN_VOCAB:
        raise ValueError(f"vocab_size must be >= {MIN_VOCAB} (bytes + special tokens)")
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((str(t) for t in texts), trainer=trainer)
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        pair=f"{BOS} $A {SEP} $B {EOS}",
        special_tokens=[(BOS, bos), (EOS, eos), (SEP, tok.token_to_id(SEP))],
    )
    return tok


def save_tokenizer(tok: Tokenizer, path: Path | str) -> None:
    """Write the tokenizer JSON atomically (a reader never sees half a file)."""
    atomic_write_text(path, tok.to_str(pretty=True))


def load_tokenizer(path: Path | str) -> Tokenizer:
    return Tokenizer.from_file(str(path))


def special_id(tok: Tokenizer, token: str) -> int:
    idx = tok.token_to_id(token)
    if idx is None:
        raise ValueError(f"tokenizer has no {token} token")
    return int(idx)


def encode_batch(tok: Tokenizer, texts: list[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 (B, L), mask bool (B, L)): ``<bos> text <eos>``, padded with ``<pad>``.

    L is the longest row, at most `max_len`; a longer text is truncated and keeps its
    ``<eos>`` as the last token, so the model always sees where a caption ends."""
    if max_len < 2:
        raise ValueError("max_len must be >= 2 (<bos> and <eos>)")
    pad, bos, eos = (special_id(tok, t) for t in (PAD, BOS, EOS))
    rows = []
    for enc in tok.encode_batch(list(texts), add_special_tokens=False):
        ids = [bos, *enc.ids, eos]
        if len(ids) > max_len:
            ids = ids[: max_len - 1] + [eos]
        rows.append(ids)
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), width), pad, np.int64)
    mask = np.zeros((len(rows), width), bool)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
        mask[i, : len(r)] = True
    return out, mask


def decode_batch(tok: Tokenizer, ids: np.ndarray, mask: np.ndarray | None = None) -> list[str]:
    """Inverse of `encode_batch` (special tokens and padding removed)."""
    rows = [
        [int(x) for x, m in zip(r, mr, strict=True) if m]
        for r, mr in zip(ids, np.ones_like(ids, bool) if mask is None else mask, strict=True)
    ]
    return tok.decode_batch(rows, skip_special_tokens=True)
