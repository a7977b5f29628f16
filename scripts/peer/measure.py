"""Run the measurements: llama.cpp's llama-bench and llama-mtmd-cli, and `imp bench`.

Every measured command runs at normal priority with the same thread count; preparation steps
(quantizing, converting) run under `nice` so they disturb other work on the machine less. The
1-minute load average is sampled while each measurement runs, because this machine is shared and
its load moves timings.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path


def log(msg: str) -> None:
    print(f"[peer] {msg}", file=sys.stderr, flush=True)


class LoadSampler:
    """Samples /proc/loadavg's 1-minute value every few seconds while it is open."""

    def __init__(self, every_s: float = 5.0):
        self.every_s = every_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def now() -> float:
        return float(Path("/proc/loadavg").read_text().split()[0])

    def _run(self) -> None:
        while True:
            self.samples.append(self.now())
            if self._stop.wait(self.every_s):
                return

    def __enter__(self) -> "LoadSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(self.now())

    def summary(self) -> dict:
        s = self.samples
        return {"min": min(s), "median": statistics.median(s), "max": max(s)}


@dataclass
class Run:
    """One finished child process: output, wall time and its own peak resident memory."""

    stdout: str
    stderr: str
    wall_s: float
    peak_rss_bytes: int


def run(cmd: list, log_file: Path, *, nice: bool = False, env: dict | None = None) -> Run:
    """Runs cmd, keeps its output in log_file.{out,err}; exits on failure. Peak RSS comes from
    wait4, so it is this child's own."""
    cmd = [str(c) for c in cmd]
    if nice:
        cmd = ["nice", "-n", "19", *cmd]
    log_file.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    # Names such as imp-v1.5-3b hold dots, so the suffixes are appended, not substituted.
    out_path, err_path = (log_file.with_name(log_file.name + s) for s in (".out", ".err"))
    with open(out_path, "w+") as out, open(err_path, "w+") as err:
        child = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        rc = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - start
        out.seek(0)
        err.seek(0)
        result = Run(out.read(), err.read(), wall, usage.ru_maxrss * 1024)
    if rc != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-25:])
        raise SystemExit(f"{' '.join(cmd)} failed ({rc}); logs {log_file}.*:\n{tail}")
    return result


# ---------------------------------------------------------------------------------------------
# llama.cpp


def llama_quantize(bin_dir: Path, src: Path, dst: Path, ftype: str, pure: bool, threads: int,
                   logs: Path) -> None:
    cmd = [bin_dir / "llama-quantize"] + (["--pure"] if pure else []) + [src, dst, ftype, threads]
    run(cmd, logs / f"quantize-{dst.stem}", nice=True)


def needs_flash_attn(kv_type: str) -> bool:
    """llama.cpp refuses a quantized V cache without flash attention."""
    return kv_type not in ("f32", "f16", "bf16")


def kv_cache_args(kv_type: str) -> list:
    """llama.cpp's options for a KV cache of `kv_type` (f32, f16, q8_0) in keys and values, with
    flash attention asked for (-fa 1) where it is needed rather than left to the default, auto."""
    return ["-ctk", kv_type, "-ctv", kv_type] + (["-fa", 1] if needs_flash_attn(kv_type) else [])


def llama_bench(bin_dir: Path, model: Path, *, prompt: int, gen: int, depth: int, threads: int,
                repeat: int, kv_type: str, logs: Path, env: dict | None = None) -> dict:
    """Prefill speed over `prompt` tokens at depth 0, decode speed of `gen` tokens at depth 0 and
    after `depth` tokens of context (as decode runs after an image question)."""
    out: dict = {}
    for tag, p, d in (("d0", prompt, 0), (f"d{depth}", 0, depth)):
        cmd = [bin_dir / "llama-bench", "-m", model, "-p", p, "-n", gen, "-d", d,
               "-t", threads, "-r", repeat, "-o", "json", *kv_cache_args(kv_type)]
        with LoadSampler() as load:
            r = run(cmd, logs / f"llama-bench-{model.stem}-{tag}", env=env)
        for test in json.loads(r.stdout):
            kind = "pp" if test["n_gen"] == 0 else "tg"
            out[f"{kind}_d{test['n_depth']}"] = {
                "tokens": test["n_prompt"] or test["n_gen"],
                "tok_s": test["avg_ts"],
                "stddev_tok_s": test["stddev_ts"],
                "samples_tok_s": test.get("samples_ts"),
                "depth": test["n_depth"],
                "flash_attn": test.get("flash_attn"),
                "type_k": test.get("type_k"),
                "type_v": test.get("type_v"),
            }
        out[f"load_{tag}"] = load.summary()
    return out


# This llama.cpp prints "mtmd batch encoding done in N ms"; older ones "image slice encoded in".
ENCODED = re.compile(r"(?:mtmd batch encoding done|image slice encoded) in (\d+) ms")
DECODED = re.compile(r"image decoded \(batch \d+/\d+\) in (\d+) ms")
PROMPT_EVAL = re.compile(r"prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens")


def mtmd_once(bin_dir: Path, model: Path, mmproj: Path, image: Path, words: int, threads: int,
              kv_type: str, log_file: Path, env: dict | None) -> dict:
    """One image question through llama-mtmd-cli, up to the first generated token."""
    prompt = "the" + " the" * (words - 1)
    cmd = [bin_dir / "llama-mtmd-cli", "-m", model, "--mmproj", mmproj, "--image", image,
           "-p", prompt, "-n", 1, "-t", threads, "--temp", 0, "--chat-template", "vicuna",
           "--seed", 1, *kv_cache_args(kv_type),
           # libllama's and libmtmd's info lines (the timings among them) need verbosity 4.
           "-lv", 4]
    r = run(cmd, log_file, env=env)
    text = r.stdout + r.stderr
    enc, pe = ENCODED.findall(text), PROMPT_EVAL.search(text)
    if not enc or not pe:
        raise SystemExit(f"could not read llama-mtmd-cli's timings in {log_file}.*")
    return {
        "encode_s": sum(int(x) for x in enc) / 1e3,
        "image_decode_s": sum(int(x) for x in DECODED.findall(text)) / 1e3,
        "prompt_eval_s": float(pe.group(1)) / 1e3,
        "prompt_tokens": int(pe.group(2)),
        "peak_rss_bytes": r.peak_rss_bytes,
        "wall_s": r.wall_s,
    }


def mtmd(bin_dir: Path, model: Path, mmproj: Path, image: Path, *, image_tokens: int,
         text_tokens: int, threads: int, repeat: int, kv_type: str, logs: Path,
         env: dict | None = None) -> dict:
    """Median image encode time and time to first token over `repeat` runs after a warm-up.

    The warm-up also calibrates the question's length: llama.cpp counts the prompt it evaluated
    (image rows + text, chat template included), and the question is resized so that the text
    part is `text_tokens` long, as imp bench's is.
    """
    want = image_tokens + text_tokens
    words = max(1, text_tokens - 8)
    first = mtmd_once(bin_dir, model, mmproj, image, words, threads, kv_type,
                      logs / "mtmd-warmup", env)
    words = max(1, words + want - first["prompt_tokens"])
    runs = []
    with LoadSampler() as load:
        for i in range(repeat):
            runs.append(mtmd_once(bin_dir, model, mmproj, image, words, threads, kv_type,
                                  logs / f"mtmd-{i}", env))
    return {**mtmd_summary(runs), "runs": runs, "load": load.summary()}


def mtmd_summary(runs: list[dict]) -> dict:
    """Medians of llama-mtmd-cli runs, with its time to first token and prefill time.

    llama.cpp's "prompt eval time" is wall time from the first prompt batch (the template text
    before the image) until the prompt is done, so in this version it spans the image encode
    too; older versions timed only the decode calls. Either way: time to first token = encode +
    decoding every prompt position, and prefill = that minus the encode.
    """

    def ttft(r: dict) -> float:
        spans_encode = r["prompt_eval_s"] >= r["encode_s"] + r["image_decode_s"]
        return r["prompt_eval_s"] + (0 if spans_encode else r["encode_s"])

    def med(f) -> float:
        return statistics.median(f(r) for r in runs)

    prefill = med(lambda r: ttft(r) - r["encode_s"])
    return {
        "encode_s": med(lambda r: r["encode_s"]),
        "image_decode_s": med(lambda r: r["image_decode_s"]),
        "prompt_eval_s": med(lambda r: r["prompt_eval_s"]),
        "prompt_tokens": runs[0]["prompt_tokens"],
        "prefill_s": prefill,
        "prefill_tok_s": runs[0]["prompt_tokens"] / prefill,
        "ttft_s": med(ttft),
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs),
    }


# ---------------------------------------------------------------------------------------------
# imp


def imp_quantize(imp: Path, folder: Path, quant: str, out: Path, logs: Path) -> None:
    run([imp, "quantize", "--model", folder, "--quant", quant, "--out", out, "--force"],
        logs / f"imp-quantize-{quant}", nice=True)


def imp_bench(imp: Path, model: Path, *, image: Path, threads: int, prompt_tokens: int,
              gen_tokens: int, repeat: int, kv_cache: str, logs: Path) -> dict:
    cmd = [imp, "bench", "--model", model, "--image", image, "--threads", threads,
           "--prompt-tokens", prompt_tokens, "--gen-tokens", gen_tokens, "--repeat", repeat,
           "--kv-cache", kv_cache, "--json"]
    with LoadSampler() as load:
        r = run(cmd, logs / f"imp-bench-{model.stem}")
    objects = [row for row in r.stdout.splitlines() if row.strip().startswith("{")]
    if not objects:
        raise SystemExit(f"imp bench printed no JSON; see {logs}/imp-bench-{model.stem}.*")
    report = json.loads(objects[-1])
    report["load"] = load.summary()
    report["process_peak_rss_bytes"] = r.peak_rss_bytes
    return report
