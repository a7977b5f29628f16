"""imp_rs against transformers' answers (the fixtures' expected.json) and `imp run --json`.

Run after installing the wheel: `python -m pytest crates/imp-python/tests`. IMP_BIN names the
`imp` binary to compare with (default: target/debug/imp of this checkout).
"""

import base64
import json
import os
import pathlib
import subprocess
import threading
import time

import numpy as np
import pytest
from PIL import Image

import imp_rs

REPO = pathlib.Path(__file__).resolve().parents[3]
MODELS = REPO / "crates/imp/tests/fixtures/models"
IMAGES = REPO / "crates/imp/tests/fixtures/images"
FAMILIES = [
    "imp-v1-3b",
    "imp-v1-3b-msft",
    "imp-v1.5-2b-qwen1.5",
    "imp-v1.5-3b-196",
    "imp-v1.5-3b-phi2",
    "imp-v1.5-4b-phi3",
]
PHOTO = IMAGES / "skimage_chelsea.png"


def expected(name):
    folder = MODELS / name
    case = json.loads((folder / "expected.json").read_text())
    case["image"] = str((folder / case["image"]).resolve())
    return case


@pytest.fixture(scope="module")
def model():
    return imp_rs.Model(MODELS / "imp-v1.5-3b-phi2")


def test_version_is_the_crate_version():
    assert imp_rs.__version__ == "0.1.0"


@pytest.mark.parametrize("name", FAMILIES)
def test_greedy_tokens_are_transformers(name):
    case = expected(name)
    model = imp_rs.Model(str(MODELS / name))
    generation = model.generate(
        case["question"],
        images=[case["image"]],
        max_new_tokens=len(case["greedy_tokens"]),
        details=True,
    )
    assert generation.tokens == case["greedy_tokens"]
    assert generation.text == case["text"]
    assert generation.prompt_tokens == case["prompt_tokens"]
    assert generation.image_tokens == case["visual_tokens"] == model.image_tokens


@pytest.mark.parametrize("name", ["imp-v1.5-2b-qwen1.5", "imp-v1.5-4b-phi3"])
def test_sampled_tokens_are_imp_runs(name):
    imp = os.environ.get("IMP_BIN", str(REPO / "target/debug/imp"))
    options = dict(max_new_tokens=12, temperature=0.8, top_k=40, top_p=0.9, seed=7)
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in options.items()]
    run = subprocess.run(
        [imp, "run", "--model", MODELS / name, "--image", PHOTO, "--prompt", "Hi", "--json", *flags],
        check=True,
        capture_output=True,
        text=True,
    )
    reference = json.loads(run.stdout)
    generation = imp_rs.Model(MODELS / name).generate(
        "Hi", images=[PHOTO], details=True, **options
    )
    assert generation.tokens == reference["tokens"]
    assert generation.text == reference["text"]
    assert generation.finish_reason == reference["finish_reason"]


def test_stream_pieces_make_the_answer(model):
    answer = model.generate("Describe it.", images=[PHOTO], max_new_tokens=20, details=True)
    stream = model.generate("Describe it.", images=[PHOTO], max_new_tokens=20, stream=True)
    assert stream.result is None
    pieces = list(stream)
    assert len(pieces) > 1
    assert "".join(pieces) == answer.text
    assert stream.result.tokens == answer.tokens
    assert str(stream.result) == answer.text
    assert list(stream) == []


def test_every_kind_of_image_gives_the_same_answer(model):
    def ask(image):
        return model.generate("What is it?", images=[image], max_new_tokens=8, details=True).tokens

    reference = ask(str(PHOTO))
    pil = Image.open(PHOTO)
    pixels = np.asarray(pil.convert("RGB"))
    padded = np.zeros((pixels.shape[0], pixels.shape[1] + 5, 3), np.uint8)
    padded[:, : pixels.shape[1]] = pixels
    as_png = PHOTO.read_bytes()
    for image in [PHOTO, as_png, bytearray(as_png), pil, pil.convert("RGBA"), pixels, padded[:, : pixels.shape[1]]]:
        assert ask(image) == reference, type(image)


def test_chat_in_openais_shape_is_the_same_question(model):
    answer = model.generate("What is it?", images=[PHOTO], max_new_tokens=10)
    data_url = "data:image/png;base64," + base64.b64encode(PHOTO.read_bytes()).decode()
    for url in [data_url, PHOTO.as_uri(), str(PHOTO)]:
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "text", "text": "What is it?"},
                ],
            }
        ]
        assert model.chat(messages, max_new_tokens=10) == answer
    streamed = model.chat([{"role": "user", "content": "Hi"}], max_new_tokens=6, stream=True)
    assert "".join(streamed) == model.chat([{"role": "user", "content": "Hi"}], max_new_tokens=6)


def test_a_conversation_reuses_its_cache_and_equals_the_whole_chat(model):
    conversation = model.conversation()
    first = conversation.ask("What is it?", images=[PHOTO], max_new_tokens=6)
    second = conversation.ask("And then?", max_new_tokens=6, details=True)
    assert second.cached_tokens > 0
    assert [turn[1] for turn in conversation.turns] == [first, second.text]
    data_url = "data:image/png;base64," + base64.b64encode(PHOTO.read_bytes()).decode()
    whole = model.chat(
        [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url}}, {"type": "text", "text": "What is it?"}]},
            {"role": "assistant", "content": first},
            {"role": "user", "content": "And then?"},
        ],
        max_new_tokens=6,
        details=True,
    )
    assert whole.tokens == second.tokens
    conversation.reset()
    assert conversation.turns == []


def test_a_closed_stream_stops_and_leaves_the_conversation_as_it_was(model):
    conversation = model.conversation()
    conversation.ask("What is it?", images=[PHOTO], max_new_tokens=4)
    stream = conversation.ask("More?", max_new_tokens=400, stream=True)
    next(stream)
    with pytest.raises(imp_rs.ImpError, match="still answering"):
        conversation.ask("Again?")
    stream.close()
    assert len(conversation.turns) == 1
    assert conversation.ask("More?", max_new_tokens=3)


def test_two_threads_generate_at_once_without_the_gil(model):
    """While one thread is inside imp, another keeps running Python: the GIL is released."""
    answer = model.generate("Describe it.", images=[PHOTO], max_new_tokens=400)
    results, ticks, spans = {}, [], {}
    running = threading.Event()

    def generate(key):
        start = time.monotonic()
        results[key] = model.generate("Describe it.", images=[PHOTO], max_new_tokens=400)
        spans[key] = (start, time.monotonic())

    def tick():
        while not running.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.001)

    ticker = threading.Thread(target=tick)
    ticker.start()
    threads = [threading.Thread(target=generate, args=(key,)) for key in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    running.set()
    ticker.join()
    assert results == {"a": answer, "b": answer}
    start, end = min(s for s, _ in spans.values()), max(e for _, e in spans.values())
    inside = [t for t in ticks if start < t < end]
    gaps = np.diff([start, *inside, end])
    # Held GIL: one gap as long as a whole generation. Released: ticks every millisecond or so.
    assert gaps.max() < (end - start) / 4, (gaps.max(), end - start)


BAD_CALLS = [
    (lambda m: m.generate("x", images=["/no/such.png"]), FileNotFoundError, "/no/such.png"),
    (lambda m: m.generate("x", images=[b"not an image"]), imp_rs.ImpError, "not an image"),
    (lambda m: m.generate("x", images=[np.zeros((4, 4), np.uint8)]), ValueError, "shape"),
    (lambda m: m.generate("x", images=[np.zeros((4, 4, 3), np.float32)]), ValueError, "uint8"),
    (lambda m: m.generate("x", images=[42]), TypeError, "int"),
    (lambda m: m.generate("x", temperature=-1), ValueError, "temperature"),
    (lambda m: m.generate("x", max_new_tokens=0), ValueError, "max_new_tokens"),
    (lambda m: m.generate("x", banana=1), TypeError, "banana"),
    (lambda m: m.generate("<image> <image>", images=[PHOTO]), imp_rs.ImpError, "marker"),
    (lambda m: m.chat([{"role": "robot", "content": "hi"}]), ValueError, "messages[0].role"),
    (lambda m: m.chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]), ValueError, "does not download"),
    (lambda m: m.chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,!!"}}]}]), ValueError, "base64"),
    (lambda m: imp_rs.Model(MODELS / "imp-v1.5-3b-phi2", dtype="f64"), ValueError, "f64"),
    (lambda m: imp_rs.Model(MODELS / "imp-v1.5-3b-phi2", threads=0), ValueError, "threads"),
    (lambda m: imp_rs.Model(MODELS / "imp-v1.5-3b-phi2", kv_cache="q4"), ValueError, "q4"),
    (lambda m: imp_rs.Model(IMAGES), imp_rs.ImpError, "no weights found"),
    (lambda m: imp_rs.Model("MILVLG/no-such-model", offline=True), imp_rs.ImpError, "MILVLG/no-such-model"),
]


@pytest.mark.parametrize("call, error, needle", BAD_CALLS)
def test_bad_input_raises_imps_message(model, call, error, needle):
    with pytest.raises(error) as raised:
        call(model)
    assert needle in str(raised.value)
    # The model is still usable.
    assert model.generate("Hi", max_new_tokens=2)


def test_ctrl_c_stops_a_generation_at_once():
    script = (
        "import sys, imp_rs\n"
        "model = imp_rs.Model(sys.argv[1])\n"
        "print('generating', flush=True)\n"
        "model.generate('Describe it.', max_new_tokens=3000)\n"
    )
    child = subprocess.Popen(
        [os.sys.executable, "-c", script, str(MODELS / "imp-v1.5-3b-phi2")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline() == "generating\n"
    time.sleep(0.3)
    child.send_signal(2)
    sent = time.monotonic()
    _, stderr = child.communicate(timeout=60)
    # The whole generation takes seconds; a released GIL alone would wait for all of it.
    assert time.monotonic() - sent < 1.0, stderr
    assert "KeyboardInterrupt" in stderr
