"""Convert an Imp Phi-2 checkpoint folder into llama.cpp's two files: the Phi-2 text model and the
multimodal projector (`mmproj`: SigLIP trunk + 2-layer MLP projector).

Written for this comparison from the key and tensor names that llama.cpp reads (src/models/phi2.cpp,
tools/mtmd/clip.cpp and clip-impl.h of the vendored tree); no code is taken from its converters.
Only the two Imp Phi-2 layouts are handled: HF-Phi names (Imp-v1.5-3B-Phi2) and phi-msft names
with a fused Wqkv (Imp-v1.5-3B-196). Safetensors shards are memory-mapped, so a 6 GB folder is
converted without loading it.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import gguf
import numpy as np

SAFETENSORS_DTYPES = {"F16": np.float16, "F32": np.float32}


class Checkpoint:
    """Lazy read-only view of every tensor in a (possibly sharded) safetensors folder."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.config = json.loads((folder / "config.json").read_text())
        self.index: dict[str, tuple[Path, str, list[int], int]] = {}
        for shard in sorted(folder.glob("*.safetensors")):
            with open(shard, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
            for name, meta in header.items():
                if name == "__metadata__":
                    continue
                start, _ = meta["data_offsets"]
                self.index[name] = (shard, meta["dtype"], meta["shape"], 8 + n + start)

    def __contains__(self, name: str) -> bool:
        return name in self.index

    def names(self) -> list[str]:
        return list(self.index)

    def get(self, name: str) -> np.ndarray:
        path, dtype, shape, offset = self.index[name]
        if dtype == "BF16":
            raw = np.memmap(path, np.uint16, "r", offset, tuple(shape))
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return np.memmap(path, SAFETENSORS_DTYPES[dtype], "r", offset, tuple(shape))


def layout(ckpt: Checkpoint) -> dict[str, str]:
    """Prefixes of the two Imp Phi-2 naming styles."""
    if "transformer.embd.wte.weight" in ckpt:
        root = "transformer"
        return {
            "root": root,
            "embed": f"{root}.embd.wte.weight",
            "layer": f"{root}.h.{{i}}",
            "attn_norm": "ln",
            "qkv": "mixer.Wqkv",
            "attn_out": "mixer.out_proj",
            "final_norm": "lm_head.ln",
            "lm_head": "lm_head.linear",
        }
    if "model.embed_tokens.weight" in ckpt:
        return {
            "root": "model",
            "embed": "model.embed_tokens.weight",
            "layer": "model.layers.{i}",
            "attn_norm": "input_layernorm",
            "qkv": None,
            "attn_out": "self_attn.dense",
            "final_norm": "model.final_layernorm",
            "lm_head": "lm_head",
        }
    raise SystemExit(f"{ckpt.folder}: not an Imp Phi-2 checkpoint (no Phi-2 embedding table)")


def text_hparams(config: dict) -> dict:
    """Phi-2 hyper-parameters from either key style of Imp's config.json."""

    def pick(*keys):
        for k in keys:
            if config.get(k) is not None:
                return config[k]
        raise SystemExit(f"config.json lacks all of {keys}")

    hidden = pick("hidden_size", "n_embd")
    heads = pick("num_attention_heads", "n_head")
    rot = config.get("rotary_dim") or int(config.get("partial_rotary_factor", 0.4) * hidden / heads)
    return {
        "hidden": hidden,
        "heads": heads,
        "layers": pick("num_hidden_layers", "n_layer"),
        "ffn": config.get("intermediate_size") or config.get("n_inner") or 4 * hidden,
        "ctx": pick("max_position_embeddings", "n_positions"),
        "eps": pick("layer_norm_eps", "layer_norm_epsilon"),
        "rot": rot,
        "theta": float(config.get("rope_theta", 10000.0)),
        "vocab": pick("vocab_size"),
    }


def add_tokenizer(w: gguf.GGUFWriter, folder: Path, vocab_size: int) -> None:
    """GPT-2 byte-level BPE as llama.cpp expects it: every id below vocab_size has a token.

    Read from tokenizer.json, or from vocab.json + merges.txt with the added tokens of
    tokenizer_config.json (the layout `imp synth` writes with imp's built-in tokenizer)."""
    if (folder / "tokenizer.json").is_file():
        tok = json.loads((folder / "tokenizer.json").read_text())
        if tok["model"]["type"] != "BPE":
            raise SystemExit(f"{folder}/tokenizer.json: expected a BPE tokenizer")
        vocab, added_tokens = tok["model"]["vocab"], tok.get("added_tokens", [])
    else:
        vocab = json.loads((folder / "vocab.json").read_text())
        config = json.loads((folder / "tokenizer_config.json").read_text())
        added_tokens = [
            {"id": int(i), **token} for i, token in config.get("added_tokens_decoder", {}).items()
        ]
    by_id = {i: t for t, i in vocab.items()}
    types = {i: gguf.TokenType.NORMAL for i in by_id}
    for added in added_tokens:
        by_id[added["id"]] = added["content"]
        types[added["id"]] = (
            gguf.TokenType.CONTROL if added["special"] else gguf.TokenType.USER_DEFINED
        )
    if max(by_id) >= vocab_size:
        raise SystemExit(f"token id {max(by_id)} does not fit the {vocab_size}-row embedding")
    # The embedding table is padded past the tokenizer (51200 rows for 50297 tokens).
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    token_types = [types.get(i, gguf.TokenType.UNUSED) for i in range(vocab_size)]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("phi-2")
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    # Merges and the bos/eos/unk/pad ids, from tokenizer.json or merges.txt and
    # tokenizer_config.json.
    gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size).add_to_gguf(w, quiet=True)
    w.add_add_bos_token(False)


def write_text(folder: Path, out: Path) -> Path:
    """The Phi-2 language model as an f16 GGUF (arch `phi2`) for llama-quantize."""
    ckpt = Checkpoint(folder)
    names = layout(ckpt)
    hp = text_hparams(ckpt.config)
    w = gguf.GGUFWriter(out, "phi2")
    w.add_name(f"{folder.name} (text, synthetic)")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_context_length(hp["ctx"])
    w.add_embedding_length(hp["hidden"])
    w.add_feed_forward_length(hp["ffn"])
    w.add_block_count(hp["layers"])
    w.add_head_count(hp["heads"])
    w.add_head_count_kv(hp["heads"])
    w.add_layer_norm_eps(hp["eps"])
    w.add_rope_dimension_count(hp["rot"])
    w.add_rope_freq_base(hp["theta"])
    add_tokenizer(w, folder, hp["vocab"])

    def put(dst: str, src: str) -> None:
        t = ckpt.get(src)
        # Matrices stay f16 (llama-quantize's input); norms and biases are f32 as llama.cpp keeps them.
        w.add_tensor(dst, t.astype(np.float16 if t.ndim == 2 else np.float32, copy=False))

    put("token_embd.weight", names["embed"])
    for i in range(hp["layers"]):
        p = names["layer"].format(i=i)
        for suffix in ("weight", "bias"):
            put(f"blk.{i}.attn_norm.{suffix}", f"{p}.{names['attn_norm']}.{suffix}")
            if names["qkv"]:
                put(f"blk.{i}.attn_qkv.{suffix}", f"{p}.{names['qkv']}.{suffix}")
            else:
                for x in "qkv":
                    put(f"blk.{i}.attn_{x}.{suffix}", f"{p}.self_attn.{x}_proj.{suffix}")
            put(f"blk.{i}.attn_output.{suffix}", f"{p}.{names['attn_out']}.{suffix}")
            put(f"blk.{i}.ffn_up.{suffix}", f"{p}.mlp.fc1.{suffix}")
            put(f"blk.{i}.ffn_down.{suffix}", f"{p}.mlp.fc2.{suffix}")
    for suffix in ("weight", "bias"):
        put(f"output_norm.{suffix}", f"{names['final_norm']}.{suffix}")
        put(f"output.{suffix}", f"{names['lm_head']}.{suffix}")
    finish(w)
    return out


def vision_config(folder: Path, config: dict) -> dict:
    """The SigLIP config: the 196 release keeps it in a sub-folder, the others in config.json."""
    for sub in sorted(folder.glob("siglip-*/config.json")):
        return json.loads(sub.read_text())
    if "vision_tower_config" in config:
        return config["vision_tower_config"]
    raise SystemExit(f"{folder}: no SigLIP config (vision_tower_config or siglip-*/config.json)")


def write_mmproj(folder: Path, out: Path, matrix_type: str) -> dict:
    """SigLIP (all stored layers, no post-norm) + Linear-GELU-Linear in llama.cpp's `mmproj`
    format, projector type `mlp`. Weight matrices are stored as matrix_type (f16, q8_0, q4_0)
    where the ggml block fits the row, else f16; returns which tensors fell back."""
    ckpt = Checkpoint(folder)
    root = layout(ckpt)["root"]
    vcfg = vision_config(folder, ckpt.config)
    v = f"{root}.vision_tower.vision_tower.vision_model."
    pattern = re.compile(re.escape(v) + r"encoder\.layers\.(\d+)\.")
    n_layers = 1 + max(int(m.group(1)) for n in ckpt.names() if (m := pattern.match(n)))
    hidden = vcfg["hidden_size"]
    patch = vcfg["patch_size"]
    positions = ckpt.get(f"{v}embeddings.position_embedding.weight").shape[0]
    image_size = vcfg["image_size"]
    if (image_size // patch) ** 2 != positions:
        raise SystemExit(f"{positions} vision positions do not match image size {image_size}")
    proj_out = ckpt.get(f"{root}.mm_projector.2.weight").shape[0]
    qtype = {
        "f16": gguf.GGMLQuantizationType.F16,
        "q8_0": gguf.GGMLQuantizationType.Q8_0,
        "q4_0": gguf.GGMLQuantizationType.Q4_0,
    }[matrix_type]

    w = gguf.GGUFWriter(out, "clip")
    w.add_type(gguf.GGUFType.MMPROJ)
    w.add_name(f"{folder.name} (mmproj, synthetic)")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_bool("clip.has_vision_encoder", True)
    w.add_string("clip.projector_type", "mlp")
    w.add_bool("clip.use_gelu", True)  # SigLIP's MLP: tanh-approximated GELU
    w.add_uint32("clip.vision.image_size", image_size)
    w.add_uint32("clip.vision.patch_size", patch)
    w.add_uint32("clip.vision.embedding_length", hidden)
    w.add_uint32("clip.vision.feed_forward_length", vcfg["intermediate_size"])
    w.add_uint32("clip.vision.block_count", n_layers)
    w.add_uint32("clip.vision.projection_dim", proj_out)
    w.add_uint32("clip.vision.attention.head_count", vcfg["num_attention_heads"])
    w.add_float32("clip.vision.attention.layer_norm_epsilon", vcfg.get("layer_norm_eps", 1e-6))
    w.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    w.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
    # llava's graph stops one layer short of block_count unless told which layer feeds the
    # projector; Imp stores exactly the layers it runs, so the output of the last one is asked for.
    w.add_array("clip.vision.feature_layer", [n_layers])

    fell_back: list[str] = []

    def put(dst: str, src: str, matrix: bool = False) -> None:
        t = np.asarray(ckpt.get(src), dtype=np.float32)
        if not matrix:
            w.add_tensor(dst, t.astype(np.float16) if t.ndim > 1 else t)
            return
        if qtype != gguf.GGMLQuantizationType.F16:
            try:
                w.add_tensor(dst, gguf.quants.quantize(t, qtype), raw_dtype=qtype)
                return
            except gguf.QuantError:
                fell_back.append(dst)
        w.add_tensor(dst, t.astype(np.float16))

    put("v.patch_embd.weight", f"{v}embeddings.patch_embedding.weight")
    put("v.patch_embd.bias", f"{v}embeddings.patch_embedding.bias")
    put("v.position_embd.weight", f"{v}embeddings.position_embedding.weight")
    parts = {
        "ln1": "layer_norm1", "ln2": "layer_norm2",
        "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
        "attn_out": "self_attn.out_proj", "ffn_up": "mlp.fc1", "ffn_down": "mlp.fc2",
    }
    for i in range(n_layers):
        for dst, src in parts.items():
            put(f"v.blk.{i}.{dst}.weight", f"{v}encoder.layers.{i}.{src}.weight", not dst.startswith("ln"))
            put(f"v.blk.{i}.{dst}.bias", f"{v}encoder.layers.{i}.{src}.bias")
    for k in (0, 2):
        put(f"mm.{k}.weight", f"{root}.mm_projector.{k}.weight", True)
        put(f"mm.{k}.bias", f"{root}.mm_projector.{k}.bias")
    finish(w)
    return {"image_size": image_size, "layers": n_layers, "matrix_type": matrix_type,
            "f16_fallback": sorted({re.sub(r"\.\d+\.", ".*.", n) for n in fell_back})}


def finish(w: gguf.GGUFWriter) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def matmul_weight_bytes(path: Path) -> int:
    """Bytes of weights one decode step reads: every tensor except the token-embedding table,
    of which it reads one row."""
    reader = gguf.GGUFReader(path)
    return sum(int(t.n_bytes) for t in reader.tensors if t.name != "token_embd.weight")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["text", "mmproj"])
    parser.add_argument("folder", type=Path, help="Imp checkpoint folder (imp synth writes one)")
    parser.add_argument("out", type=Path, help="GGUF file to write")
    parser.add_argument("--type", default="f16", choices=["f16", "q8_0", "q4_0"],
                        help="mmproj weight matrices (default f16)")
    a = parser.parse_args()
    tmp = a.out.with_name(a.out.name + ".part")
    if a.what == "text":
        write_text(a.folder, tmp)
        info = {}
    else:
        info = write_mmproj(a.folder, tmp, a.type)
    tmp.rename(a.out)
    print(json.dumps(info))
