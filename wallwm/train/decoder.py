"""Pretrain the frozen text decoder that makes CoT latents readable, on the build's own text.

No small causal language model installs offline (PITFALLS), so the decoder is ours: a small LM
trained on the train split's captions (every annotation level), task instructions and the
chain-of-thought texts the unified mode supervises (`cot_text`), then frozen. Only train-split
episodes contribute, so the validation CoT stays unseen. Reported beside its held-out NLL: the
unigram model of the same tokens (the best context-free predictor), so a reader can tell
whether the decoder learned anything.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wallwm.data.tokenizer import encode_batch, load_tokenizer
from wallwm.model.reasoning import _lm_nll, pretrain_text_decoder
from wallwm.model.wallwm import WallWM
from wallwm.train.data import action_events, cot_text, read_annotations, resolve_splits


def text_corpus(build_dir: Path | str, split: str, horizon: int, stride: int = 4
                ) -> list[str]:
    """Captions, instructions and chunk CoT texts of one split's episodes, in a fixed order."""
    build = Path(build_dir)
    eps = resolve_splits(build)
    eps = eps[eps.split == split].sort_values(["dataset", "episode_index"])
    texts: list[str] = []
    anns_by_ds: dict[str, dict[int, Any]] = {}
    for r in eps.itertuples(index=False):
        ds = str(r.dataset)
        if ds not in anns_by_ds:
            anns_by_ds[ds] = read_annotations(build / ds / "meta" / "annotations.jsonl")
        anns = anns_by_ds[ds].get(int(r.episode_index), [])
        texts.append(str(r.task))
        texts.extend(a.caption for a in anns if a.caption)
        if action_events(anns):
            texts.extend(cot_text(anns, t, horizon) for t in range(0, int(r.length), stride))
    return [t for t in texts if t]


def _batches(ids: np.ndarray, mask: np.ndarray, batch: int, seed: int):
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(ids))
        for i in range(0, len(order) - batch + 1 if len(order) >= batch else 1, batch):
            sel = order[i:i + batch]
            yield torch.from_numpy(ids[sel]), torch.from_numpy(mask[sel])


def _unigram_nll(train: np.ndarray, train_mask: np.ndarray, val: np.ndarray,
                 val_mask: np.ndarray, vocab: int) -> float:
    """NLL per token of the val tokens (after <bos>) under add-one unigram train frequencies."""
    counts = Counter(train[:, 1:][train_mask[:, 1:]].tolist())
    total = sum(counts.values()) + vocab
    toks = val[:, 1:][val_mask[:, 1:]].tolist()
    return float(np.mean([-math.log((counts.get(t, 0) + 1) / total) for t in toks]))


def pretrain_decoder(model: WallWM, build_dir: Path | str, steps: int, lr: float,
                     batch_size: int, seed: int = 0) -> dict[str, float]:
    """Train `model.reasoning.decoder` on the build's train text, freeze it, mark it trained.
    Returns its first/last train loss and held-out NLL beside the unigram baseline."""
    build = Path(build_dir)
    cfg = model.cfg
    tok = load_tokenizer(build / "tokenizer.json")
    train = text_corpus(build, "train", cfg.action_horizon)
    val = text_corpus(build, "val", cfg.action_horizon) or train[: max(1, len(train) // 10)]
    if not train:
        raise ValueError(f"{build}: no caption, instruction or CoT text in the train split; "
                         "the text decoder has nothing to learn from")
    ids, mask = encode_batch(tok, train, cfg.max_text_len)
    vids, vmask = encode_batch(tok, val, cfg.max_text_len)
    dec = model.reasoning.decoder
    torch.manual_seed(seed)
    losses = pretrain_text_decoder(dec, _batches(ids, mask, batch_size, seed), steps, lr)
    model.reasoning.decoder_trained.fill_(True)
    with torch.no_grad():
        dec.eval()
        v_ids, v_mask = torch.from_numpy(vids), torch.from_numpy(vmask)
        logits = dec(v_ids, v_mask)
        val_nll = float(_lm_nll(logits[:, :-1], v_ids[:, 1:], v_mask[:, 1:]))
    return {"decoder_train_loss_first": losses[0] if losses else float("nan"),
            "decoder_train_loss_last": float(np.mean(losses[-10:])) if losses else float("nan"),
            "decoder_val_nll": val_nll,
            "decoder_val_nll_unigram": _unigram_nll(ids, mask, vids, vmask, tok.get_vocab_size()),
            "decoder_texts": float(len(train))}
