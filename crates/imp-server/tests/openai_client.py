"""`imp serve` driven by the official `openai` Python package over loopback.

Answers must equal `imp run --json` for the same settings; errors must reach the client as the
OpenAI API's own exceptions. Run from the repository root after `cargo build -p imp-cli`:

    .venv-ci/bin/python crates/imp-server/tests/openai_client.py

IMP_BIN overrides the binary (default target/debug/imp).
"""

import base64
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import unittest
import urllib.error
import urllib.request
from pathlib import Path
from typing import Literal

import openai
import pydantic

ROOT = Path(__file__).resolve().parents[3]
IMP = Path(os.environ.get("IMP_BIN", ROOT / "target/debug/imp"))
FIXTURES = ROOT / "crates/imp/tests/fixtures"
MODEL = "imp-v1.5-4b-phi3"
MODEL_DIR = FIXTURES / "models" / MODEL
# A PEFT-written LoRA for this model (non-zero A and B), from imp-train's fixtures.
ADAPTER = ROOT / "crates/imp-train/tests/fixtures" / MODEL / "init_adapter"
IMAGES = FIXTURES / "images"
CHELSEA = IMAGES / "skimage_chelsea.png"
QUESTION = "What is shown in this image?"
KEY = "test-key"


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def image_message(url: str, text: str = QUESTION) -> dict:
    return {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": text},
        ],
    }


def imp_run(image: Path, max_tokens: int, *args: str) -> dict:
    out = subprocess.run(
        [IMP, "run", "--model", MODEL_DIR, "--image", image, "--prompt", QUESTION,
         "--max-new-tokens", str(max_tokens), "--json", *args],
        check=True, capture_output=True, text=True, timeout=120,
    )
    return json.loads(out.stdout)


class Server:
    def __init__(self, *extra: str):
        self.cache = tempfile.TemporaryDirectory()
        self.process = subprocess.Popen(
            [IMP, "serve", "--model", MODEL_DIR, "--port", "0", "--api-key", KEY,
             "--allow-files", IMAGES, "--cache-dir", self.cache.name,
             "--max-image-bytes", "1000000", "--max-body-bytes", "2000000", *extra],
            stderr=subprocess.PIPE, text=True,
        )
        line = self.process.stderr.readline()
        match = re.search(r"on (http://\S+)", line)
        if not match:
            self.process.kill()
            raise RuntimeError(f"imp serve did not start: {line}{self.process.stderr.read()}")
        self.url = match.group(1)
        # Keep draining stderr so that the server never blocks on a full pipe.
        threading.Thread(target=self.process.stderr.read, daemon=True).start()

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as response:
            text = response.read().decode()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        raise AssertionError(f"no metric {name}")

    def raw_post(self, body: bytes, key: str | None = KEY) -> tuple[int, dict]:
        request = urllib.request.Request(f"{self.url}/v1/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        if key is not None:
            request.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self.cache.cleanup()
        return code


class OpenAIClientWithLora(unittest.TestCase):
    def test_a_served_lora_answers_as_imp_run_with_it(self):
        server = Server("--lora", str(ADAPTER))
        try:
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
            reply = client.chat.completions.create(
                model=MODEL, messages=[image_message(data_url(CHELSEA.read_bytes()))],
                temperature=0, max_tokens=12)
        finally:
            self.assertEqual(server.stop(), 0)
        expected = imp_run(CHELSEA, 12, "--lora", str(ADAPTER))
        self.assertEqual(reply.choices[0].message.content, expected["text"])
        self.assertNotEqual(expected["tokens"], imp_run(CHELSEA, 12)["tokens"],
                            "the adapter must change the answer for the test to mean anything")


class OpenAIClient(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server()
        cls.client = openai.OpenAI(base_url=f"{cls.server.url}/v1", api_key=KEY, max_retries=0)
        cls.chelsea = data_url(CHELSEA.read_bytes())

    @classmethod
    def tearDownClass(cls):
        # SIGTERM is a graceful shutdown: exit status 0.
        assert cls.server.stop() == 0

    def ask(self, **kwargs):
        kwargs.setdefault("model", MODEL)
        kwargs.setdefault("messages", [image_message(self.chelsea)])
        return self.client.chat.completions.create(**kwargs)

    def test_plain_greedy_answer_equals_imp_run(self):
        expected = imp_run(CHELSEA, 12)
        reply = self.ask(temperature=0, max_tokens=12)
        self.assertEqual(reply.choices[0].message.content, expected["text"])
        self.assertEqual(reply.choices[0].finish_reason, expected["finish_reason"])
        self.assertEqual(reply.usage.prompt_tokens, expected["prompt_tokens"])
        self.assertEqual(reply.usage.completion_tokens, len(expected["tokens"]))

    def test_sampled_answer_with_a_seed_equals_imp_run(self):
        expected = imp_run(CHELSEA, 16, "--temperature", "0.8", "--top-p", "0.9", "--seed", "7")
        reply = self.ask(temperature=0.8, top_p=0.9, seed=7, max_completion_tokens=16)
        self.assertEqual(reply.choices[0].message.content, expected["text"])

    def test_streamed_answer_equals_imp_run_and_ends_with_usage(self):
        expected = imp_run(CHELSEA, 12, "--temperature", "0.7", "--seed", "3")
        stream = self.ask(temperature=0.7, seed=3, max_tokens=12, stream=True,
                          stream_options={"include_usage": True})
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text.strip(), expected["text"])
        finish = [c.choices[0].finish_reason for c in chunks if c.choices]
        self.assertEqual(finish[-1], expected["finish_reason"])
        self.assertEqual(chunks[-1].usage.completion_tokens, len(expected["tokens"]))

    def test_logprobs_equal_imp_run(self):
        expected = imp_run(CHELSEA, 5, "--top-logprobs", "3")
        reply = self.ask(temperature=0, max_tokens=5, logprobs=True, top_logprobs=3)
        content = reply.choices[0].logprobs.content
        self.assertEqual(len(content), len(expected["tokens"]))
        for ours, theirs in zip(content, expected["top_logprobs"]):
            self.assertAlmostEqual(ours.logprob, theirs[0][1], places=4)
            self.assertEqual([round(t.logprob, 4) for t in ours.top_logprobs],
                             [round(lp, 4) for _, lp in theirs])

    def test_image_from_a_file_path(self):
        path = IMAGES / "skimage_rocket.jpg"
        expected = imp_run(path, 8)
        reply = self.ask(temperature=0, max_tokens=8,
                         messages=[image_message(f"file://{path}")])
        self.assertEqual(reply.choices[0].message.content, expected["text"])

    def test_a_second_turn_hits_the_image_and_conversation_caches(self):
        url = data_url((IMAGES / "skimage_coins.png").read_bytes())
        first = self.ask(temperature=0, max_tokens=6, messages=[image_message(url)])
        before = {name: self.server.metric(name) for name in [
            "imp_image_cache_misses_total", 'imp_image_cache_hits_total{tier="memory"}',
            "imp_kv_cache_hits_total", "imp_kv_cache_reused_tokens_total"]}
        second = self.ask(temperature=0, max_tokens=6, messages=[
            image_message(url),
            {"role": "assistant", "content": first.choices[0].message.content},
            {"role": "user", "content": "What colour are they?"},
        ])
        cached = second.usage.prompt_tokens_details.cached_tokens
        self.assertGreaterEqual(cached, first.usage.prompt_tokens)
        delta = {name: self.server.metric(name) - value for name, value in before.items()}
        self.assertEqual(delta, {
            "imp_image_cache_misses_total": 0,
            'imp_image_cache_hits_total{tier="memory"}': 1,
            "imp_kv_cache_hits_total": 1,
            "imp_kv_cache_reused_tokens_total": cached,
        })

    def test_json_schema_answers_parse_into_a_pydantic_model(self):
        # The client's own structured-output path: it sends a strict json_schema built from the
        # class and parses the reply into it (the tiny model's free answer is gibberish).
        class Scene(pydantic.BaseModel):
            animal: Literal["cat", "dog", "bird"]
            legs: int = pydantic.Field(ge=0, le=8)
            colours: list[Literal["black", "brown", "white"]] = pydantic.Field(max_length=3)

        for seed in (1, 2, 3):
            reply = self.client.chat.completions.parse(
                model=MODEL, messages=[image_message(self.chelsea)], response_format=Scene,
                temperature=1, seed=seed, max_tokens=100)
            choice = reply.choices[0]
            self.assertEqual(choice.finish_reason, "stop", choice.message.content)
            self.assertIsInstance(choice.message.parsed, Scene, choice.message.content)

    def test_json_object_and_streamed_schema_answers(self):
        schema = {"type": "object", "additionalProperties": False, "required": ["count"],
                  "properties": {"count": {"type": "integer", "minimum": 0, "maximum": 20}}}
        stream = self.ask(temperature=0.9, seed=5, max_tokens=40, stream=True, response_format={
            "type": "json_schema", "json_schema": {"name": "count", "schema": schema}})
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        self.assertEqual(list(json.loads(text)), ["count"])
        reply = self.ask(temperature=0, max_tokens=300, response_format={"type": "json_object"})
        if reply.choices[0].finish_reason == "stop":
            self.assertIsInstance(json.loads(reply.choices[0].message.content), dict)
        else:
            self.assertTrue(reply.choices[0].message.content.startswith("{"))

    def test_bad_response_formats_are_400s_naming_the_problem(self):
        def schema_format(schema):
            return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}

        for response_format, param, words in [
            ({"type": "yaml"}, "response_format.type", "yaml"),
            ({"type": "json_schema"}, "response_format.json_schema", "json_schema"),
            ({"type": "json_schema", "json_schema": {"schema": {}}},
             "response_format.json_schema.name", "name"),
            (schema_format({"type": "strin"}), "response_format", "strin"),
            (schema_format({"type": "string", "minLength": 3, "maxLength": 1}),
             "response_format", "JSON schema"),
        ]:
            error = self.assert_error(openai.BadRequestError, None,
                                      lambda: self.ask(response_format=response_format), param)
            self.assertIn(words, error.body["message"])

    def test_models_are_listed(self):
        self.assertEqual([m.id for m in self.client.models.list()], [MODEL])

    def assert_error(self, exception, code, call, param=None):
        with self.assertRaises(exception) as caught:
            call()
        body = caught.exception.body
        self.assertEqual(body.get("code"), code, body)
        self.assertTrue(body.get("message"))
        if param is not None:
            self.assertEqual(body.get("param"), param, body)
        return caught.exception

    def test_request_errors_reach_the_client_as_openai_exceptions(self):
        image = "messages[0].content[0]"
        self.assert_error(openai.NotFoundError, "model_not_found",
                          lambda: self.ask(model="gpt-4o"), "model")
        self.assert_error(openai.BadRequestError, "invalid_image_url",
                          lambda: self.ask(messages=[image_message("data:image/png;base64,@@@")]),
                          image)
        self.assert_error(openai.BadRequestError, "invalid_image",
                          lambda: self.ask(messages=[image_message(data_url(b"not a png"))]))
        self.assert_error(openai.BadRequestError, "image_too_large",
                          lambda: self.ask(messages=[image_message(data_url(bytes(1_200_000)))]),
                          image)
        self.assert_error(openai.PermissionDeniedError, "image_path_forbidden",
                          lambda: self.ask(messages=[image_message(
                              f"file://{MODEL_DIR}/config.json")]), image)
        self.assert_error(openai.BadRequestError, "remote_images_disabled",
                          lambda: self.ask(messages=[image_message("https://example.com/a.png")]),
                          image)
        two = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": self.chelsea}}] * 2}
        self.assert_error(openai.BadRequestError, "too_many_images",
                          lambda: self.ask(messages=[two]), "messages[0].content")
        self.assert_error(openai.BadRequestError, "context_length_exceeded",
                          lambda: self.ask(messages=[image_message(self.chelsea, "word " * 3000)]),
                          "messages")
        self.assert_error(openai.BadRequestError, None,
                          lambda: self.ask(temperature=5), "temperature")
        error = self.assert_error(openai.APIStatusError, "request_too_large",
                                  lambda: self.ask(messages=[image_message(data_url(bytes(1_600_000)))]))
        self.assertEqual(error.status_code, 413)
        wrong_key = openai.OpenAI(base_url=f"{self.server.url}/v1", api_key="nope", max_retries=0)
        self.assert_error(openai.AuthenticationError, "invalid_api_key",
                          lambda: wrong_key.chat.completions.create(
                              model=MODEL, messages=[image_message(self.chelsea)]))

    def test_malformed_bodies_get_json_errors(self):
        for body, status, param in [
            (b"{not json", 400, None),
            (json.dumps({"model": MODEL}).encode(), 400, "messages"),
            (json.dumps({"model": MODEL, "messages": "hi"}).encode(), 400, "messages"),
            (json.dumps({"model": MODEL, "max_tokens": "ten",
                         "messages": [{"role": "user", "content": "hi"}]}).encode(), 400, "max_tokens"),
        ]:
            got, reply = self.server.raw_post(body)
            self.assertEqual(got, status, reply)
            self.assertEqual(reply["error"]["type"], "invalid_request_error")
            self.assertEqual(reply["error"]["param"], param)
        got, reply = self.server.raw_post(b"{}", key=None)
        self.assertEqual((got, reply["error"]["code"]), (401, "invalid_api_key"))


if __name__ == "__main__":
    unittest.main(verbosity=2)
