"""Event captions: deterministic templates by default, an optional VLM over HTTP.

Every action and subtask event needs a caption the text encoder can read ("grasp the red
puck", not "grasp"): the model is conditioned on it, and the dual clustering groups events by
it. The task-level event keeps the instruction.

`TemplateCaptioner` (the default) fills a template per event label with the object and place
names parsed from the instruction (``ep.extra["object"]`` / ``ep.extra["place"]`` win when a
source knows them). It is deterministic and needs nothing running.

`HttpVLMCaptioner` asks a vision-language model behind an OpenAI-compatible
``/v1/chat/completions`` endpoint, sending the event's first and last frames as base64 PNG
``image_url`` parts and a prompt naming the task and the event label. It is off unless a
config asks for it (``make_captioner("http", url=..., model=...)``). Any failure (server
down, HTTP error, malformed or empty answer) falls back to the template caption with a
logged warning, so a build never stops for the captioner; after a connection failure the
rest of that episode is not tried again. To serve a VLM locally, e.g. with vLLM::

    pip install vllm
    vllm serve Qwen/Qwen2.5-VL-3B-Instruct --port 8000 --max-model-len 8192
    # then: make_captioner("http", url="http://127.0.0.1:8000", model="Qwen/Qwen2.5-VL-3B-Instruct")

Any other OpenAI-compatible server (SGLang, llama.cpp's server with a multimodal projector,
a hosted API with ``api_key_env="OPENAI_API_KEY"``) works the same way.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
import re
import struct
import zlib
from typing import Any, Protocol, runtime_checkable

import numpy as np
import requests

from wallwm.data.episode import Episode, Event

log = logging.getLogger(__name__)

CAPTIONED_LEVELS = ("action", "subtask")
DEFAULT_OBJECT = "the object"

# label -> (template with a place, template without one); {o} object, {p} place
TEMPLATES: dict[str, tuple[str, str]] = {
    "reach": ("reach toward {o}", "reach toward {o}"),
    "approach": ("reach toward {o}", "reach toward {o}"),
    "grasp": ("grasp {o}", "grasp {o}"),
    "lift": ("lift {o}", "lift {o}"),
    "move": ("carry {o} to {p}", "carry {o}"),
    "carry": ("carry {o} to {p}", "carry {o}"),
    "transport": ("carry {o} to {p}", "carry {o}"),
    "place": ("set {o} down at {p}", "set {o} down"),
    "put": ("set {o} down at {p}", "set {o} down"),
    "release": ("let go of {o}", "let go of {o}"),
    "retreat": ("move the arm away", "move the arm away"),
    "push": ("push {o} to {p}", "push {o}"),
    "pull": ("pull {o}", "pull {o}"),
    "press": ("press {o}", "press {o}"),
    "open": ("open {o}", "open {o}"),
    "close": ("close {o}", "close {o}"),
    "turn": ("turn {o}", "turn {o}"),
    "rotate": ("rotate {o}", "rotate {o}"),
    "insert": ("insert {o} into {p}", "insert {o}"),
    "pour": ("pour {o} into {p}", "pour {o}"),
    "stack": ("stack {o} on {p}", "stack {o}"),
    "slide": ("slide {o} to {p}", "slide {o}"),
    "wipe": ("wipe {p} with {o}", "wipe {o}"),
    "hold": ("hold {o} still", "hold {o} still"),
    "idle": ("hold still", "hold still"),
    "wait": ("hold still", "hold still"),
}
GENERIC = ("{verb} {o}", "{verb} {o}")  # unknown labels

_DETERMINERS = ("the", "a", "an")
# words that end a noun phrase; those marked as targets introduce the place
_TARGET_PREPS = ("at", "to", "onto", "into", "on", "in", "inside", "toward", "towards", "near")
_STOP = set(_TARGET_PREPS) | {"and", "then", "from", "with", "of", "by", "off", "it", "up", ","}


def parse_task(task: str) -> tuple[str | None, str | None]:
    """(object, place) noun phrases of an English instruction, None where not found.

    "pick up the red puck and place it at the blue goal" -> ("the red puck", "the blue goal");
    the object is the first determiner phrase, the place the first one after a target
    preposition (at, to, into, on, ...) that follows it. Deliberately simple: instructions
    are short imperatives, and a miss only makes the caption more generic."""
    words = re.findall(r"[\w'-]+|,", task.lower())
    phrases: list[tuple[int, str]] = []  # (index of the determiner, phrase)
    i = 0
    while i < len(words):
        if words[i] in _DETERMINERS:
            j = i + 1
            while j < len(words) and words[j] not in _STOP and words[j] not in _DETERMINERS:
                j += 1
            if j > i + 1:
                phrases.append((i, " ".join(words[i:j])))
            i = j
        else:
            i += 1
    if not phrases:
        return None, None
    obj_at, obj = phrases[0]
    place = None
    for at, phrase in phrases[1:]:
        if at > obj_at and at > 0 and words[at - 1] in _TARGET_PREPS:
            place = phrase
            break
    return obj, place


def _names(ep: Episode) -> tuple[str, str | None]:
    obj, place = parse_task(ep.task or "")
    obj = ep.extra.get("object") or _definite(obj) or DEFAULT_OBJECT
    place = ep.extra.get("place") or _definite(place)
    return str(obj), None if place is None else str(place)


def _definite(phrase: str | None) -> str | None:
    """ "a cup" -> "the cup": once the instruction has named it, captions refer back to it."""
    if phrase is None:
        return None
    return re.sub(r"^(a|an)\s", "the ", phrase)


def template_caption(label: str, obj: str, place: str | None) -> str:
    """The template caption of one action label."""
    key = " ".join(label.strip().lower().replace("_", " ").replace("-", " ").split())
    first = key.split(" ")[0] if key else ""
    with_place, without = TEMPLATES.get(key) or TEMPLATES.get(first) or GENERIC
    text = (with_place if place else without).format(o=obj, p=place or "", verb=key)
    return re.sub(r"\s+", " ", text).strip()


def _is_placeholder(e: Event) -> bool:
    """An empty caption, or one that only repeats the label, is for the captioner to fill."""
    return e.caption.strip().lower() in ("", e.label.strip().lower())


@runtime_checkable
class Captioner(Protocol):
    def caption(self, ep: Episode, events: list[Event]) -> list[Event]:
        """New events with `caption` filled (action/subtask); task level keeps the instruction."""
        ...


class TemplateCaptioner:
    """Templates per event label over object/place names from the instruction (default).

    `overwrite` False keeps captions someone already wrote (anything but empty or the bare
    label); True recaptions everything of the captioned levels."""

    name = "template"

    def __init__(self, overwrite: bool = False):
        self.overwrite = overwrite

    def caption_one(self, ep: Episode, e: Event) -> str:
        obj, place = _names(ep)
        if e.level == "task":
            return e.caption or ep.task
        if e.level == "subtask" and " " in e.label.strip():
            return e.label.strip()  # subtask labels are already phrases ("pick up the red puck")
        return template_caption(e.label, obj, place)

    def caption(self, ep: Episode, events: list[Event]) -> list[Event]:
        out = []
        for e in events:
            if e.level == "task":
                out.append(dataclasses.replace(e, caption=e.caption or ep.task))
            elif e.level in CAPTIONED_LEVELS and (self.overwrite or _is_placeholder(e)):
                out.append(dataclasses.replace(e, caption=self.caption_one(ep, e)))
            else:
                out.append(dataclasses.replace(e))
        return out


def png_bytes(img: np.ndarray) -> bytes:
    """Encode an (H, W, 3) uint8 image as PNG with the standard library (no image package)."""
    img = np.ascontiguousarray(img, np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    h, w, _ = img.shape
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + tag
            + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def _frames_at(ep: Episode, key: str, wanted: set[int]) -> dict[int, np.ndarray]:
    """The frames of `key` at the `wanted` indices, in one pass over a lazy source."""
    src = ep.videos[key]
    if not callable(src):
        arr = np.asarray(src)
        return {i: arr[i] for i in wanted if 0 <= i < len(arr)}
    out: dict[int, np.ndarray] = {}
    last = max(wanted, default=-1)
    for i, f in enumerate(ep.frames_of(key)):
        if i in wanted:
            out[i] = np.asarray(f)
        if i >= last:
            break
    return out


PROMPT = (
    'A robot is doing the task: "{task}". The images are the first and the last frame of '
    'one {level} of that task, labelled "{label}" (a template would say: "{hint}"). '
    "Describe what the robot does in this {level} as one short imperative phrase of at most "
    "12 words, naming the objects by colour and kind. Answer with the phrase only."
)


class HttpVLMCaptioner:
    """Captions from a VLM behind an OpenAI-compatible chat-completions endpoint."""

    name = "http"

    def __init__(
        self,
        url: str,
        model: str,
        timeout: float = 30.0,
        api_key_env: str | None = None,
        camera: str | None = None,
        max_tokens: int = 48,
        overwrite: bool = False,
        fallback: TemplateCaptioner | None = None,
    ):
        url = url.rstrip("/")
        if not url.endswith("/chat/completions"):
            url = url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")
        self.url, self.model, self.timeout = url, model, float(timeout)
        self.api_key_env, self.camera, self.max_tokens = api_key_env, camera, int(max_tokens)
        self.overwrite = overwrite
        self.fallback = fallback or TemplateCaptioner(overwrite=True)
        self.session = requests.Session()
        self.failures = 0  # requests that fell back, over this captioner's life

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def request_body(self, ep: Episode, e: Event, images: list[np.ndarray]) -> dict[str, Any]:
        hint = self.fallback.caption_one(ep, e)
        text = PROMPT.format(task=ep.task, level=e.level, label=e.label, hint=hint)
        content: list[dict[str, Any]] = [{"type": "text", "text": text}]
        for img in images:
            b64 = base64.b64encode(png_bytes(img)).decode("ascii")
            content.append(
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}}
            )
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.max_tokens,
            "temperature": 0.0,
        }

    def ask(self, body: dict[str, Any]) -> str:
        """One completion's text, cleaned to a single phrase; raises on any failure."""
        r = self.session.post(self.url, json=body, headers=self._headers(), timeout=self.timeout)
        r.raise_for_status()
        text = r.json()["choices"][0]["message"]["content"]
        if isinstance(text, list):  # some servers return content parts
            text = " ".join(p.get("text", "") for p in text if isinstance(p, dict))
        text = str(text).strip().splitlines()[0] if str(text).strip() else ""
        text = text.strip().strip("\"'`").strip().rstrip(".").strip()
        if not text:
            raise ValueError("empty completion")
        return text

    def caption(self, ep: Episode, events: list[Event]) -> list[Event]:
        todo = [
            k
            for k, e in enumerate(events)
            if e.level in CAPTIONED_LEVELS and (self.overwrite or _is_placeholder(e))
        ]
        key = self.camera or next(iter(ep.videos), None)
        if key is not None and not key.startswith("observation.images."):
            key = "observation.images." + key
        frames: dict[int, np.ndarray] = {}
        if key in ep.videos and todo:
            wanted = {
                i for k in todo for i in (events[k].start, max(events[k].start, events[k].end - 1))
            }
            frames = _frames_at(ep, key, wanted)
        out = [dataclasses.replace(e) for e in events]
        for e in out:
            if e.level == "task" and not e.caption:
                e.caption = ep.task
        server_down = False
        for k in todo:
            e = out[k]
            template = self.fallback.caption_one(ep, e)
            images = [frames[i] for i in (e.start, max(e.start, e.end - 1)) if i in frames]
            if server_down or not images:
                e.caption = template
                continue
            try:
                e.caption = self.ask(self.request_body(ep, e, images))
            except Exception as exc:  # noqa: BLE001 - any failure falls back, by design
                self.failures += 1
                server_down = isinstance(exc, requests.ConnectionError | requests.Timeout)
                log.warning(
                    "VLM captioner %s failed on %s [%d, %d) %s: %s; using the template %r",
                    self.url, ep.source_id, e.start, e.end, e.label, exc, template,
                )  # fmt: skip
                e.caption = template
        return out


CAPTIONERS = {"template": TemplateCaptioner, "http": HttpVLMCaptioner}


def make_captioner(kind: str = "template", **kw: Any) -> Captioner:
    """The captioner named `kind` ("template" | "http"), built with `kw`."""
    try:
        cls = CAPTIONERS[kind]
    except KeyError:
        raise ValueError(
            f"unknown captioner {kind!r}; expected one of {sorted(CAPTIONERS)}"
        ) from None
    return cls(**kw)
