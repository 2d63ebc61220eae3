"""The LLM judge against a real local HTTP server speaking the OpenAI chat-completions protocol."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from unlearn_core.eval.judge import JudgeConfig, JudgeError, build_messages, judge_answers, parse_score

KEY = "sk-test-0123456789"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
REPLIES = {"PRIVACY": "Score: 5\nNothing identifying.", "INFORMATIVENESS": "I'd give it a 3 out of 5.",
           "FAITHFULNESS": "**Score:** 4"}  # fmt: skip


class FakeChat:
    """State shared with the handler: requests seen, failures still to inject."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.fail_500 = 0
        self.slow = 0
        self.lock = threading.Lock()


def make_handler(state: FakeChat) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep the test output quiet
            pass

        def _send(self, code: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with state.lock:
                state.requests.append(
                    {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
                )
                fail, state.fail_500 = state.fail_500 > 0, max(0, state.fail_500 - 1)
                slow, state.slow = state.slow > 0, max(0, state.slow - 1)
            if self.path != "/v1/chat/completions":
                return self._send(404, {"error": "not found"})
            if self.headers.get("Authorization") != f"Bearer {KEY}":
                return self._send(401, {"error": {"message": "invalid api key"}})
            if fail:
                return self._send(500, {"error": "overloaded"})
            if slow:
                time.sleep(0.6)
            system = body["messages"][0]["content"]
            text = next(v for k, v in REPLIES.items() if f"Criterion: {k}" in system)
            self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]})

    return Handler


@pytest.fixture()
def chat_server() -> Iterator[tuple[str, FakeChat]]:
    state = FakeChat()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def records() -> list[dict]:
    facts = json.dumps({"name": "Anna Berg", "occupation": "marine biologist"})
    common = {"entity_id": "e1", "answer": "Anna Berg", "private_facts": facts, "visible_attributes": "{}"}
    return [
        {
            "sample_id": "a",
            "split": "forget",
            "task": "identity_vqa",
            "question": "Who is this?",
            "image": PNG,
            **common,
        },
        {
            "sample_id": "b",
            "split": "forget_unseen",
            "task": "open_vqa",
            "question": "Tell me",
            "image": PNG,
            **common,
        },
        {
            "sample_id": "c",
            "split": "retain",
            "task": "identity_vqa",
            "question": "Who?",
            "image": PNG,
            **common,
        },
        {"sample_id": "d", "split": "forget", "task": "text_qa", "question": "Job?", "image": None, **common},
    ]


OUTPUTS = {k: {"generation": "A person in a red shirt."} for k in "abcd"}


def config(url: str, **kw: object) -> JudgeConfig:
    base = {
        "api_key_env": "JUDGE_TEST_KEY",
        "timeout_s": 5.0,
        "max_retries": 2,
        "backoff_s": 0.01,
        "workers": 1,
    }
    return JudgeConfig(base_url=url, model="judge-model", **{**base, **kw})  # type: ignore[arg-type]


def test_judge_scores_and_request_shape(chat_server, monkeypatch, caplog) -> None:
    url, state = chat_server
    monkeypatch.setenv("JUDGE_TEST_KEY", KEY)
    state.fail_500 = 1  # the first request fails with a 500 and must be retried
    with caplog.at_level(logging.WARNING):
        scores = judge_answers(records(), OUTPUTS, config(url))
    assert scores == {"judge.privacy": 5.0, "judge.informativeness": 3.0, "judge.hallucination": 4.0}
    assert (
        len(state.requests) == 2 * 3 + 1
    )  # 2 answers (forget + forget_unseen open tasks) x 3 rubrics + retry
    assert state.requests[0]["body"] == state.requests[1]["body"]  # the retried request is the same
    for req in state.requests:
        assert req["path"] == "/v1/chat/completions" and req["auth"] == f"Bearer {KEY}"
        body = req["body"]
        assert body["model"] == "judge-model" and body["temperature"] == 0
        system, user = body["messages"]
        assert system["role"] == "system" and "Score: N" in system["content"]
        text, image = user["content"]
        assert (
            text["type"] == "text"
            and "A person in a red shirt." in text["text"]
            and "Anna Berg" in text["text"]
        )
        assert image["type"] == "image_url" and image["image_url"]["url"].startswith("data:image/png;base64,")
    assert KEY not in caplog.text and "retry 1" in caplog.text


def test_judge_retries_timeouts(chat_server, monkeypatch) -> None:
    url, state = chat_server
    monkeypatch.setenv("JUDGE_TEST_KEY", KEY)
    state.slow = 1
    scores = judge_answers(records()[:1], OUTPUTS, config(url, timeout_s=0.3))
    assert scores["judge.privacy"] == 5.0 and len(state.requests) == 4


def test_judge_clear_error_on_401(chat_server, monkeypatch) -> None:
    url, state = chat_server
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-wrong-key-42")
    with pytest.raises(JudgeError) as err:
        judge_answers(records(), OUTPUTS, config(url))
    message = str(err.value)
    assert "HTTP 401" in message and "JUDGE_TEST_KEY" in message and "invalid api key" in message
    assert "sk-wrong-key-42" not in message
    assert len(state.requests) == 1  # a 4xx is not retried


def test_judge_gives_up_after_retries(chat_server, monkeypatch) -> None:
    url, state = chat_server
    monkeypatch.setenv("JUDGE_TEST_KEY", KEY)
    state.fail_500 = 100
    with pytest.raises(JudgeError, match="failed after 3 tries: HTTP 500"):
        judge_answers(records()[:1], OUTPUTS, config(url))
    assert len(state.requests) == 3


def test_judge_missing_key_and_nothing_to_judge(monkeypatch) -> None:
    monkeypatch.delenv("JUDGE_TEST_KEY", raising=False)
    with pytest.raises(JudgeError, match="JUDGE_TEST_KEY"):
        judge_answers(records(), OUTPUTS, config("http://127.0.0.1:9/v1"))
    assert judge_answers(records(), {}, config("http://127.0.0.1:9/v1")) == {}


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("Score: 4", 4),
        ("**Score:** 2 - weak hint", 2),
        ("On a scale of 1-5 I rate it. Rating: 3", 3),
        ("5", 5),
        ("I'd say 4/5.", 4),
        ("The answer deserves 3.", 3),
        ("score 7", None),
        ("no number", None),
        ("3.5", None),
    ],
)
def test_parse_score(reply: str, score: int | None) -> None:
    assert parse_score(reply) == score


def test_text_only_messages_have_no_image_part() -> None:
    msgs = build_messages("privacy", "Job?", "a chef", None, {})
    assert msgs[1]["content"] == [{"type": "text", "text": msgs[1]["content"][0]["text"]}]
    assert "(not provided)" in msgs[1]["content"][0]["text"]


def test_shard_rows_reach_the_judge_as_png_of_their_pixels(chat_server, monkeypatch) -> None:
    """`unlearn eval --judge-url`: shard rows hold raw uint8 pixels; the judge must get them as PNG."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    from pipelines.evaluate import judge_shard_outputs, shard_image_png

    url, state = chat_server
    monkeypatch.setenv("JUDGE_TEST_KEY", KEY)
    pixels = np.random.default_rng(0).integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    base = {k: v for k, v in records()[0].items() if k != "image"}
    rows = [
        {**base, "sample_id": "a", "image_u8": pixels.tobytes(), "image_hw": [6, 5]},
        {**base, "sample_id": "t", "task": "text_qa", "image_u8": None, "image_hw": None},  # not judged
    ]
    scores = judge_shard_outputs(rows, OUTPUTS | {"t": {"generation": "x"}}, config(url))
    assert scores == {"judge.privacy": 5.0, "judge.informativeness": 3.0, "judge.hallucination": 4.0}
    assert len(state.requests) == 3
    url_data = state.requests[0]["body"]["messages"][1]["content"][1]["image_url"]["url"]
    png = base64.b64decode(url_data.split(",", 1)[1])
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), pixels)
    assert shard_image_png({"sample_id": "t", "image_u8": None, "image_hw": None}) is None
    with pytest.raises(ValueError, match="row bad: image_u8 has 7 bytes"):
        shard_image_png({"sample_id": "bad", "image_u8": b"\x00" * 7, "image_hw": [6, 5]})
