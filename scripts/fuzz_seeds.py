#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target (fuzz/fuzz_targets) from the committed fixtures.

Seeds are small on purpose: libFuzzer mutates faster on kilobytes than on the megabytes of the
real checkpoints, so checkpoint seeds keep a few real tensor names, shapes and configs and
drop the rest. A seed packs the several files a target reads, joined by the separator in
fuzz/src/lib.rs. Standard library only.

    scripts/fuzz_seeds.py OUT_DIR      # writes OUT_DIR/<target>/<seed>
"""

import base64
import json
import struct
import sys
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "crates/imp/tests/fixtures"
MODELS = FIXTURES / "models"
TRAIN = ROOT / "crates/imp-train/tests/fixtures"
SEPARATOR = b"\n--8<--\n"
FAMILIES = ["imp-v1.5-3b-phi2", "imp-v1.5-2b-qwen1.5", "imp-v1.5-4b-phi3"]


def pack(*files):
    return SEPARATOR.join(files)


def safetensors(tensors):
    """A safetensors file of `{name: (dtype, shape, bytes)}`."""
    header, data = {}, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def f32(values):
    return struct.pack(f"<{len(values)}f", *values)


def small_checkpoint(model):
    """The index, one shard of the model's first few 1-d tensors, and its config.json."""
    index = json.loads((model / "model.safetensors.index.json").read_text())
    names = sorted(index["weight_map"])[:6]
    tensors = {name: ("F32", [4], f32([0.5, -1.0, 2.0, 0.0])) for name in names}
    index = {"metadata": {"total_size": 16 * len(names)}, "weight_map": {n: "model.safetensors" for n in names}}
    return json.dumps(index).encode(), safetensors(tensors), (model / "config.json").read_bytes()


def gguf(metadata, tensors):
    """A GGUF v3 file: `metadata` of str/int/list values, `tensors` of `(name, type, shape, bytes)`."""

    def string(text):
        raw = text.encode()
        return struct.pack("<Q", len(raw)) + raw

    def value(v):
        if isinstance(v, str):
            return struct.pack("<I", 8) + string(v)
        if isinstance(v, int):
            return struct.pack("<I", 4) + struct.pack("<I", v)
        kind = 8 if isinstance(v[0], str) else 4
        items = b"".join(string(x) if kind == 8 else struct.pack("<I", x) for x in v)
        return struct.pack("<I", 9) + struct.pack("<IQ", kind, len(v)) + items

    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    for key, v in metadata.items():
        out += string(key) + value(v)
    offset, data = 0, b""
    for name, kind, shape, raw in tensors:
        out += string(name) + struct.pack("<I", len(shape))
        out += b"".join(struct.pack("<Q", d) for d in reversed(shape))
        out += struct.pack("<IQ", kind, offset)
        data += raw + b"\0" * (-len(raw) % 32)
        offset = len(data)
    out += b"\0" * (-len(out) % 32)
    return out + data


def gguf_seeds():
    model = MODELS / "imp-v1.5-3b-phi2"
    metadata = {
        "general.architecture": "imp",
        "imp.format_version": 1,
        "imp.config_json": (model / "config.json").read_text(),
        "imp.chat_family": "phi2",
        "imp.quantization.vision": "f16",
        "imp.quantization.projector": "f32",
        "imp.quantization.llm": "q4_0",
        "imp.padded.names": ["model.layers.0.mlp.fc2.weight"],
        "imp.padded.widths": [30],
        "tokenizer.huggingface.json": json.dumps(tokenizer_json()),
    }
    q4_0_block = struct.pack("<e", 0.25) + bytes(range(16))
    q8_0_block = struct.pack("<e", 0.5) + bytes(range(32))
    tensors = [
        ("model.final_layernorm.weight", 0, [4], f32([1.0, 2.0, 3.0, 4.0])),
        ("model.final_layernorm.bias", 1, [4], struct.pack("<4e", 0.0, 0.5, -0.5, 1.0)),
        ("model.layers.0.mlp.fc2.weight", 2, [2, 32], q4_0_block * 2),
        ("model.layers.0.mlp.fc1.weight", 8, [1, 32], q8_0_block),
    ]
    yield "phi2-mixed", gguf(metadata, tensors)
    yield "foreign", gguf({"general.architecture": "llama"}, tensors[:1])


def tokenizer_json():
    """A byte-level BPE tokenizer of a handful of tokens, in `tokenizer.json`'s layout."""
    vocab = {"h": 0, "e": 1, "l": 2, "o": 3, "Ġ": 4, "he": 5, "ll": 6, "hell": 7, "hello": 8}
    return {
        "version": "1.0",
        "added_tokens": [{"id": 9, "content": "<|endoftext|>", "special": True, "single_word": False,
                          "lstrip": False, "rstrip": False, "normalized": False}],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "vocab": vocab, "merges": ["h e", "l l", "he ll", "hell o"]},
    }


def tokenizer_seeds():
    tiny_config = json.dumps({"eos_token": "<|endoftext|>", "added_tokens_decoder": {}}).encode()
    text = "hello <|endoftext|> héllo 世界 <image>".encode()
    tiny = json.dumps(tokenizer_json()).encode()
    yield "tokenizer-json", b"\0" + pack(tiny, b"", tiny_config, text)
    vocab = json.dumps(tokenizer_json()["model"]["vocab"]).encode()
    merges = b"#version: 0.2\nh e\nl l\nhe ll\nhell o\n"
    yield "vocab-merges", b"\1" + pack(vocab, merges, tiny_config, text)
    phi3 = FIXTURES / "tokenizers/phi-3"
    yield "sentencepiece", b"\2" + pack((phi3 / "tokenizer.model").read_bytes(), b"",
                                         (phi3 / "tokenizer_config.json").read_bytes(), text)


def png(width, height, rgb=True):
    """A tiny PNG of a gradient."""
    channels = 3 if rgb else 1
    rows = b"".join(b"\0" + bytes((x * 37 + y * 11 + c * 90) % 256 for x in range(width) for c in range(channels))
                    for y in range(height))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2 if rgb else 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def image_seeds():
    yield "png-rgb", png(5, 3)
    yield "png-gray", png(2, 7, rgb=False)
    yield "pillow_hopper.jpg", (FIXTURES / "images/pillow_hopper.jpg").read_bytes()
    yield "minduka.png", (FIXTURES / "images/matplotlib_Minduka_Present_Blue_Pack.png").read_bytes()
    # 1x1 GIF and BMP: other decoders the image crate enables.
    yield "gif", bytes.fromhex("47494638396101000100800000ffffff00000021f90401000000002c00000000010001000002024401003b")
    yield "bmp", bytes.fromhex("424d3a0000000000000036000000280000000100000001000000010018000000000004000000130b0000130b00000000000000000000ff000000")


def chat_seeds():
    image = "data:image/png;base64," + base64.b64encode(png(4, 4)).decode()
    requests = {
        "text": {"model": "imp", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4},
        "image": {"model": "imp", "stream": True, "temperature": 0.7, "top_p": 0.9, "seed": 3, "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                         {"type": "image_url", "image_url": {"url": image, "detail": "low"}}]},
            {"role": "assistant", "content": "A square."},
            {"role": "user", "content": "What colour?"}], "stop": ["\n"], "max_tokens": 8},
        "two-images": {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": image}}, {"type": "image_url", "image_url": image},
            {"type": "text", "text": "<image> compare"}]}], "n": 1, "logprobs": False},
    }
    for name, request in requests.items():
        yield name, json.dumps(request).encode()


def training_seeds():
    data = json.loads((TRAIN / "imp-v1.5-3b-phi2/data.json").read_text())
    yield "json", b"\0" + json.dumps(data).encode()
    yield "jsonl", b"\1" + "\n".join(json.dumps(sample) for sample in data).encode()


def adapter_seeds():
    folder = TRAIN / "imp-v1.5-3b-phi2/init_adapter"
    config = json.loads((folder / "adapter_config.json").read_text())
    config["target_modules"] = ["fc2"]
    config["r"] = config["lora_alpha"] = 2
    # The fixture model's fc2 maps 40 -> 10 features (see its config): rank-2 factors.
    prefix = "base_model.model.model.layers.0.mlp.fc2"
    weights = safetensors({
        f"{prefix}.lora_A.weight": ("F32", [2, 40], f32([0.01] * 80)),
        f"{prefix}.lora_B.weight": ("F32", [10, 2], f32([0.02] * 20)),
    })
    yield "fc2", pack(json.dumps(config).encode(), weights, b"")
    yield "with-projector", pack(json.dumps(config).encode(), weights,
                                 (folder / "non_lora_trainables.safetensors").read_bytes())


def config_seeds():
    for pick, name in enumerate(FAMILIES + ["imp-v1-3b-msft", "imp-v1.5-3b-196"]):
        model = MODELS / name
        generation = model / "generation_config.json"
        yield name, bytes([pick]) + pack((model / "config.json").read_bytes(),
                                         generation.read_bytes() if generation.exists() else b"", b"")


def checkpoint_seeds():
    for name in FAMILIES:
        yield name, pack(*small_checkpoint(MODELS / name))
    index, shard, config = small_checkpoint(MODELS / FAMILIES[0])
    yield "single-file", pack(b"", shard, config)


TARGETS = {
    "checkpoint_folder": checkpoint_seeds,
    "gguf": gguf_seeds,
    "config": config_seeds,
    "tokenizer": tokenizer_seeds,
    "image": image_seeds,
    "chat_request": chat_seeds,
    "training_data": training_seeds,
    "adapter": adapter_seeds,
}


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    for target, seeds in TARGETS.items():
        folder = out / target
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in seeds():
            (folder / f"seed-{name}").write_bytes(data)


if __name__ == "__main__":
    main()
