"""Caption tokenizer: deterministic training, atomic save/load, padding, truncation, Unicode."""

from __future__ import annotations

import numpy as np
import pytest

from wallwm.data.tokenizer import (
    BOS,
    EOS,
    PAD,
    SPECIAL_TOKENS,
    decode_batch,
    encode_batch,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)

CAPTIONS = [
    "reach toward the red puck",
    "grasp the red puck",
    "lift the red puck",
    "carry the red puck to the blue goal",
    "set the red puck down at the blue goal",
    "let go of the red puck",
    "move the arm away",
    "pull the green drawer",
    "press the red button",
    "push the red puck to the green goal",
] * 20
UNICODE = ["把红色的杯子放到盘子里", "grasp the 🍎 gently 🤖", "déplacer la tasse", "ß→∞"]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(CAPTIONS, vocab_size=512)


def test_training_is_deterministic():
    a = train_tokenizer(CAPTIONS + UNICODE, vocab_size=400)
    b = train_tokenizer(CAPTIONS + UNICODE, vocab_size=400)
    assert a.to_str() == b.to_str()


def test_special_tokens_have_fixed_ids(tok):
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert tok.get_vocab_size() <= 512
    with pytest.raises(ValueError):
        train_tokenizer(CAPTIONS, vocab_size=100)


def test_unicode_round_trips_without_unk(tok):
    # trained on English only: byte-level BPE still covers every string
    for text in UNICODE + CAPTIONS[:3]:
        enc = tok.encode(text)
        assert enc.ids[0] == tok.token_to_id(BOS) and enc.ids[-1] == tok.token_to_id(EOS)
        assert tok.token_to_id("<unk>") not in enc.ids
        assert tok.decode(enc.ids) == text


def test_encode_batch_pads_truncates_and_keeps_eos(tok):
    texts = ["grasp the red puck", "", "carry the red puck to the blue goal " * 5]
    ids, mask = encode_batch(tok, texts, max_len=16)
    assert ids.dtype == np.int64 and mask.dtype == bool and ids.shape == mask.shape
    assert ids.shape == (3, 16)
    pad, bos, eos = (tok.token_to_id(t) for t in (PAD, BOS, EOS))
    assert (ids[:, 0] == bos).all()
    assert (ids[~mask] == pad).all()
    lengths = mask.sum(1)
    assert lengths[1] == 2 and lengths[2] == 16  # empty -> <bos><eos>; long -> truncated
    for r, n in zip(ids, lengths, strict=True):
        assert r[n - 1] == eos and mask[0, : lengths[0]].all()
    assert decode_batch(tok, ids, mask)[:2] == texts[:2]
    short_ids, _ = encode_batch(tok, ["lift"], max_len=64)
    assert short_ids.shape[1] < 64  # padded to the longest row, not to max_len


def test_save_load_round_trip(tok, tmp_path):
    path = tmp_path / "tok" / "tokenizer.json"
    save_tokenizer(tok, path)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    loaded = load_tokenizer(path)
    assert loaded.to_str() == tok.to_str()
    a = encode_batch(tok, UNICODE, 64)
    b = encode_batch(loaded, UNICODE, 64)
    np.testing.assert_array_equal(a[0], b[0])
    assert decode_batch(loaded, *b) == UNICODE
