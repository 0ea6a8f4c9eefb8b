"""Captions: templates over parsed names, the HTTP VLM captioner and its fallbacks, drop."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import av
import numpy as np
import pytest

from wallwm.data.caption_drop import CaptionDropper, caption_drop_prob
from wallwm.data.captions import (
    Captioner,
    HttpVLMCaptioner,
    TemplateCaptioner,
    make_captioner,
    parse_task,
    png_bytes,
    template_caption,
)
from wallwm.data.episode import Episode, Event

PICK = "pick up the red puck and place it at the blue goal"


def episode(task: str = PICK, t: int = 12, extra: dict | None = None) -> Episode:
    rng = np.random.default_rng(0)
    return Episode(
        source="test",
        source_id="test/0",
        tier="t2_robot_public",
        task=task,
        fps=10.0,
        timestamps=np.arange(t) / 10.0,
        videos={"observation.images.cam": rng.integers(0, 255, (t, 8, 8, 3), dtype=np.uint8)},
        extra=extra or {},
    )


def events() -> list[Event]:
    labels = ["reach", "grasp", "lift", "move", "place", "release", "retreat"]
    evs = [Event(lab, i, i + 1, "action", lab, "gripper") for i, lab in enumerate(labels)]
    evs.append(Event("pick up the red puck", 0, 3, "subtask", "", "expert_phase"))
    evs.append(Event("task", 0, 12, "task", "", ""))
    return evs


def test_parse_task_names_object_and_place():
    assert parse_task(PICK) == ("the red puck", "the blue goal")
    assert parse_task("push the red puck to the green goal") == ("the red puck", "the green goal")
    assert parse_task("open the green drawer") == ("the green drawer", None)
    assert parse_task("press the red button from the top") == ("the red button", None)
    assert parse_task("put a cup into the sink") == ("a cup", "the sink")
    assert parse_task("把杯子放到盘子里") == (None, None)


def test_template_captions_per_label():
    out = TemplateCaptioner().caption(episode(), events())
    assert [e.caption for e in out] == [
        "reach toward the red puck",
        "grasp the red puck",
        "lift the red puck",
        "carry the red puck to the blue goal",
        "set the red puck down at the blue goal",
        "let go of the red puck",
        "move the arm away",
        "pick up the red puck",
        PICK,  # the task level keeps the instruction
    ]
    assert [e.caption for e in events()][0] == "reach"  # inputs are not mutated
    assert isinstance(TemplateCaptioner(), Captioner)


def test_templates_other_labels_extra_and_determinism():
    assert template_caption("push", "the red puck", "the green goal") == (
        "push the red puck to the green goal"
    )
    assert template_caption("pull", "the green drawer", None) == "pull the green drawer"
    assert template_caption("press", "the red button", None) == "press the red button"
    assert template_caption("wiggle_gently", "the cup", None) == "wiggle gently the cup"
    ep = episode("tidy up", extra={"object": "the mug", "place": "the shelf"})
    evs = [Event("move", 0, 5, "action"), Event("open", 5, 9, "action")]
    out = TemplateCaptioner().caption(ep, evs)
    assert [e.caption for e in out] == ["carry the mug to the shelf", "open the mug"]
    assert [e.caption for e in TemplateCaptioner().caption(episode("wave"), evs)] == [
        "carry the object",
        "open the object",
    ]
    again = TemplateCaptioner().caption(ep, evs)
    assert [e.to_json() for e in out] == [e.to_json() for e in again]


def test_written_captions_are_kept_unless_overwrite():
    evs = [Event("grasp", 0, 3, "action", "pinch the puck")]
    assert TemplateCaptioner().caption(episode(), evs)[0].caption == "pinch the puck"
    assert TemplateCaptioner(overwrite=True).caption(episode(), evs)[0].caption == (
        "grasp the red puck"
    )


def test_png_encoder_writes_a_valid_png():
    img = np.random.default_rng(1).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    data = png_bytes(img)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with av.open(io.BytesIO(data), format="png_pipe") as c:
        frame = next(c.decode(video=0)).to_ndarray(format="rgb24")
    np.testing.assert_array_equal(frame, img)


# ---- the HTTP VLM captioner against a real local server ----


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    def __init__(self, status: int = 200, answer: str = "Grab the red puck."):
        self.status, self.answer, self.requests = status, answer, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.path, dict(self.headers), body))
                if outer.status != 200:
                    self.send_response(outer.status)
                    self.end_headers()
                    return
                reply = {"choices": [{"message": {"role": "assistant", "content": outer.answer}}]}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.close()


def test_http_captioner_sends_frames_and_reads_the_answer(server, monkeypatch):
    monkeypatch.setenv("TEST_VLM_KEY", "sekrit")
    cap = make_captioner("http", url=server.url, model="tiny-vlm", api_key_env="TEST_VLM_KEY")
    ep = episode()
    evs = [Event("grasp", 2, 6, "action"), Event("task", 0, 12, "task")]
    out = cap.caption(ep, evs)
    assert out[0].caption == "Grab the red puck"  # first line, quotes and full stop stripped
    assert out[1].caption == PICK
    assert len(server.requests) == 1
    path, headers, body = server.requests[0]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer sekrit"
    assert body["model"] == "tiny-vlm"
    (msg,) = body["messages"]
    assert msg["role"] == "user"
    kinds = [p["type"] for p in msg["content"]]
    assert kinds == ["text", "image_url", "image_url"]
    assert "grasp" in msg["content"][0]["text"] and PICK in msg["content"][0]["text"]
    sent = []
    for part in msg["content"][1:]:
        url = part["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        data = base64.b64decode(url.split(",", 1)[1])
        with av.open(io.BytesIO(data), format="png_pipe") as c:
            sent.append(next(c.decode(video=0)).to_ndarray(format="rgb24"))
    frames = ep.videos["observation.images.cam"]
    np.testing.assert_array_equal(sent[0], frames[2])  # first frame of the event
    np.testing.assert_array_equal(sent[1], frames[5])  # last frame of the event


def test_http_captioner_falls_back_on_500(caplog):
    s = _Server(status=500)
    try:
        cap = HttpVLMCaptioner(s.url, "m", timeout=5)
        out = cap.caption(episode(), [Event("grasp", 0, 3, "action"), Event("lift", 3, 5)])
    finally:
        s.close()
    assert [e.caption for e in out] == ["grasp the red puck", "lift the red puck"]
    assert len(s.requests) == 2 and cap.failures == 2
    assert "using the template" in caplog.text


def test_http_captioner_falls_back_when_down_and_stops_trying(caplog):
    cap = HttpVLMCaptioner(f"http://127.0.0.1:{_free_port()}", "m", timeout=2)
    out = cap.caption(episode(), [Event("grasp", 0, 3, "action"), Event("lift", 3, 5)])
    assert [e.caption for e in out] == ["grasp the red puck", "lift the red puck"]
    assert cap.failures == 1  # connection refused once; the rest of the episode is skipped
    assert "failed" in caplog.text


def test_http_captioner_falls_back_on_an_empty_answer():
    s = _Server(answer="  ")
    try:
        out = HttpVLMCaptioner(s.url + "/v1", "m").caption(episode(), [Event("lift", 0, 3)])
    finally:
        s.close()
    assert out[0].caption == "lift the red puck"
    assert s.requests[0][0] == "/v1/chat/completions"


def test_make_captioner_kinds():
    assert isinstance(make_captioner(), TemplateCaptioner)
    with pytest.raises(ValueError, match="unknown captioner"):
        make_captioner("gpt")


# ---- length-aware caption drop ----


def test_drop_prob_shape():
    kw = {"lo": 0.1, "hi": 0.9, "short": 8, "long": 48}
    assert caption_drop_prob(1, **kw) == caption_drop_prob(8, **kw) == 0.9
    assert caption_drop_prob(48, **kw) == caption_drop_prob(500, **kw) == 0.1
    assert caption_drop_prob(28, **kw) == pytest.approx(0.5)  # the cosine's midpoint
    ps = [caption_drop_prob(n, **kw) for n in range(0, 60)]
    assert all(a >= b for a, b in zip(ps, ps[1:], strict=False))  # monotone
    with pytest.raises(ValueError):
        caption_drop_prob(5, lo=0.9, hi=0.1)
    with pytest.raises(ValueError):
        caption_drop_prob(5, short=10, long=10)


def test_dropper_is_deterministic_per_seed_epoch_event():
    d = CaptionDropper(seed=3)
    ids = [f"ep{i}/ev{j}" for i in range(50) for j in range(4)]
    first = [d.keep(i, 20, epoch=0) for i in ids]
    assert first == [CaptionDropper(seed=3).keep(i, 20, epoch=0) for i in reversed(ids)][::-1]
    assert first != [d.keep(i, 20, epoch=1) for i in ids]  # a new epoch draws afresh
    assert first != [CaptionDropper(seed=4).keep(i, 20, epoch=0) for i in ids]


@pytest.mark.parametrize("length", [2, 8, 18, 28, 38, 48, 100])
def test_dropper_matches_rho(length):
    d = CaptionDropper(seed=0, lo=0.1, hi=0.9, short=8, long=48)
    n = 20000
    dropped = sum(not d.keep(f"ev{i}", length, epoch=7) for i in range(n)) / n
    # binomial sd <= 0.0036 at n = 20000: 4 sd
    assert abs(dropped - d.drop_prob(length)) < 0.015
