"""imp vs llama.cpp on the same random-weight Imp-v1.5-3B model, side by side.

Run it through scripts/peer/compare.sh (which makes the virtual environment); see that file's
header for what it downloads, how long it takes and the AMX caveat. Steps, per image size:

1. `imp synth` writes a random-weight Imp-v1.5-3B-Phi2 (384 px) or Imp-v1.5-3B-196 folder.
2. to_gguf.py converts it for llama.cpp: a Phi-2 text GGUF and an `mmproj` (SigLIP + projector).
3. Per format: llama-quantize quantizes the text model, `imp quantize` writes imp's GGUF.
4. llama.cpp is measured with llama-bench (prefill, decode at depth 0 and after the prompt) and
   llama-mtmd-cli (image encode, time to first token); imp with `imp bench`. Both engines keep
   the same KV cache type (--kv-cache).
5. The tables (one per format and size, then decode of every format side by side) are printed
   and written as JSON, Markdown and a PNG chart under target/peer.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import llamacpp
import measure
import report
from measure import log
from to_gguf import matmul_weight_bytes

REPO = Path(__file__).resolve().parents[2]
PEER = REPO / "target" / "peer"
PRESETS = {384: "imp-v1.5-3b", 196: "imp-v1.5-3b-196"}
PATCH = 14
# imp's format -> llama-quantize's type and the mmproj's matrix type. llama.cpp's Q4_K_S with
# --pure stores every matrix as q4_K, exactly imp's all-q4_k. SigLIP's 1152-wide rows are not
# whole k-quant super-blocks (256), so llama.cpp's vision tower gets q4_0, its 4-bit format with
# 32-wide blocks; 4304-wide rows (the MLP's second matrix) fit neither and stay f16.
QUANTS = {
    "q4_0": ("Q4_0", "q4_0"),
    "q4_k": ("Q4_K_S", "q4_0"),
    "q8_0": ("Q8_0", "q8_0"),
}
# imp's --kv-cache -> llama.cpp's -ctk/-ctv type.
KV_CACHES = {"f32": "f32", "f16": "f16", "q8": "q8_0"}
# The cache types this llama-bench parses (its own list, narrower than llama-mtmd-cli's: no f32).
LLAMA_BENCH_KV = {"f16", "bf16", "q8_0"}
TO_GGUF = Path(__file__).with_name("to_gguf.py")
DEFAULT_IMAGE = REPO / "crates/imp/tests/fixtures/images/skimage_chelsea.png"
# Per 384 px model: folder 6.0 GB, f16 text GGUF 5.6 GB, quantized files up to 2 x 3.5 GB.
DISK_NEEDED_GB = 20


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quant", default="q4_k,q8_0,q4_0",
                   help="comma-separated formats among q4_k, q8_0, q4_0 (default: all three)")
    p.add_argument("--sizes", default="384,196",
                   help="image sizes: 384 (Imp-v1.5-3B-Phi2, 729 tokens), 196 (Imp-v1.5-3B-196)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3, help="measured runs per tool (default 3)")
    p.add_argument("--prompt-tokens", type=int, default=64, help="text tokens besides the image")
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    p.add_argument("--kv-cache", default="f16", choices=list(KV_CACHES),
                   help="both engines' KV cache: imp --kv-cache, llama.cpp -ctk/-ctv (q8: q8_0, "
                        "with flash attention on, which its quantized V cache needs). Default "
                        "f16. This llama-bench has no f32 cache: with f32 its rows use f16")
    p.add_argument("--mmproj-type", default="auto", choices=["auto", "f16", "q8_0", "q4_0"],
                   help="llama.cpp's vision matrices (auto: q8_0 for q8_0, else q4_0)")
    p.add_argument("--llama-mix", action="store_true",
                   help="llama-quantize's own per-tensor mix instead of --pure (one format)")
    # llama.cpp's CPU backend is built with OpenMP (its default). libgomp's threads busy-wait at
    # every barrier; on a machine shared with other work a waiting thread keeps losing its core
    # and llama.cpp's speed collapses and swings (decode of the q4_k model at load 4.5 on 2
    # cores: 2.5-12 tok/s busy-waiting, a steady 9.5 tok/s waiting passively). Passive is the
    # default so that the numbers measure llama.cpp's kernels rather than the scheduler.
    p.add_argument("--omp-wait", default="passive", choices=["passive", "active", "unset"],
                   help="OMP_WAIT_POLICY for llama.cpp (default passive: busy-waiting threads "
                        "collapse on a shared machine)")
    p.add_argument("--imp", type=Path, default=REPO / "target/release/imp",
                   help="imp binary (built with cargo build --release -p imp-cli if missing)")
    p.add_argument("--llama-only", action="store_true", help="skip imp's measurements")
    p.add_argument("--keep", action="store_true", help="keep the model folders and GGUF files")
    p.add_argument("--jobs", type=int, default=2, help="compile jobs for llama.cpp (niced)")
    p.add_argument("--build-only", action="store_true", help="only build llama.cpp's tools")
    p.add_argument("--from-json", type=Path,
                   help="measure nothing: rewrite the table and chart from a comparison.json")
    p.add_argument("--work", type=Path, default=PEER / "work",
                   help="scratch folder for models and GGUF files, deleted at the end unless --keep")
    p.add_argument("--out", type=Path, default=PEER, help="where comparison.{json,md,png} go")
    a = p.parse_args()
    a.quant = [q.strip() for q in a.quant.split(",") if q.strip()]
    a.sizes = [int(s) for s in a.sizes.split(",") if s.strip()]
    for q in a.quant:
        if q not in QUANTS:
            p.error(f"unknown format {q}; known: {', '.join(QUANTS)}")
    for s in a.sizes:
        if s not in PRESETS:
            p.error(f"unknown image size {s}; known: {', '.join(map(str, PRESETS))}")
    return a


def imp_binary(a: argparse.Namespace) -> Path:
    if not a.imp.is_file():
        log(f"{a.imp} missing: cargo build --release -p imp-cli")
        subprocess.run(["nice", "-n", "19", "cargo", "build", "--release", "-p", "imp-cli"],
                       cwd=REPO, check=True)
    if not a.llama_only:
        probe = subprocess.run([a.imp, "bench", "--help"], capture_output=True, text=True)
        if probe.returncode != 0 or "--kv-cache" not in probe.stdout:
            raise SystemExit(f"{a.imp} has no `bench --kv-cache` yet: rebuild it "
                             "(cargo build --release -p imp-cli) or pass --llama-only")
    return a.imp


def cpu_name() -> str:
    """`model name` of /proc/cpuinfo; ARM cores list only implementer and part numbers."""
    fields: dict[str, str] = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    if fields.get("model name"):
        return fields["model name"]
    if fields.get("CPU implementer") and fields.get("CPU part"):
        return (f"{platform.machine()} (CPU implementer {fields['CPU implementer']}, "
                f"part {fields['CPU part']})")
    return platform.processor() or "unknown CPU"


def llama_kv_caches(kv_cache: str) -> dict[str, str]:
    """llama.cpp's KV cache type per tool for imp's --kv-cache value."""
    kv = KV_CACHES[kv_cache]
    bench = kv if kv in LLAMA_BENCH_KV else "f16"
    if bench != kv:
        log(f"llama-bench has no {kv} KV cache: its decode and prefill rows use {bench}")
    return {"llama-bench": bench, "llama-mtmd-cli": kv}


def imp_version() -> str:
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown commit"
    dirty = " + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
    return f"commit {commit}{dirty}, release build"


def check_disk(path: Path, gb: float) -> None:
    path.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path).free / 1e9
    if free < gb:
        raise SystemExit(f"{free:.0f} GB free under {path}; this step needs about {gb:.0f} GB")


def remove(*paths: Path) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def prepare_checkpoint(a, imp: Path, preset: str, home: Path, logs: Path) -> tuple[Path, Path]:
    """The synthetic folder and its f16 llama.cpp text GGUF (kept across formats)."""
    folder = home / "checkpoint"
    if not (folder / "config.json").is_file():
        check_disk(a.work, DISK_NEEDED_GB)
        log(f"imp synth --preset {preset}")
        remove(folder)
        measure.run([imp, "synth", "--preset", preset, "--out", folder], logs / f"synth-{preset}",
                    nice=True)
    text_f16 = home / "llama-text-f16.gguf"
    if not text_f16.is_file():
        log(f"converting {preset} to llama.cpp's Phi-2 GGUF")
        measure.run([sys.executable, TO_GGUF, "text", folder, text_f16],
                    logs / f"convert-text-{preset}", nice=True)
    return folder, text_f16


def prepare_llama(a, bin_dir: Path, quant: str, home: Path, text_f16: Path, logs: Path) -> dict:
    """llama.cpp's files for one format: the quantized text model and the mmproj."""
    ftype, auto_mmproj = QUANTS[quant]
    mmproj_type = auto_mmproj if a.mmproj_type == "auto" else a.mmproj_type
    mmproj = home / f"llama-mmproj-{mmproj_type}.gguf"
    if not mmproj.is_file():
        log(f"converting the vision tower and projector to an mmproj ({mmproj_type})")
        r = measure.run([sys.executable, TO_GGUF, "mmproj", home / "checkpoint", mmproj, "--type",
                         mmproj_type], logs / f"convert-mmproj-{home.name}-{mmproj_type}", nice=True)
        mmproj.with_suffix(".json").write_text(r.stdout)
    fallback = json.loads(mmproj.with_suffix(".json").read_text())["f16_fallback"]
    text = home / f"llama-text-{ftype}.gguf"
    if not text.is_file():
        log(f"{quant}: llama-quantize {'' if a.llama_mix else '--pure '}{ftype}")
        tmp = text.with_name(text.name + ".part")
        measure.llama_quantize(bin_dir, text_f16, tmp, ftype, not a.llama_mix, a.threads, logs)
        tmp.rename(text)
    return {
        "text": text,
        "mmproj": mmproj,
        "text_type": f"{ftype}{' (llama-quantize mix)' if a.llama_mix else ' --pure'}",
        "mmproj_type": mmproj_type + (f" ({', '.join(fallback)} f16)" if fallback else ""),
        "text_file_bytes": text.stat().st_size,
        "mmproj_file_bytes": mmproj.stat().st_size,
        "weight_bytes_per_token": matmul_weight_bytes(text),
    }


def measure_case(a, bin_dir: Path, imp: Path, llama_env: dict, size: int, quant: str,
                 home: Path, text_f16: Path, logs: Path) -> dict:
    image_tokens = (size // PATCH) ** 2
    logs = logs / f"{home.name}-{quant}"
    case = {
        "quant": quant,
        "kv_cache": a.kv_cache,
        "image_size": size,
        "image_tokens": image_tokens,
        "prompt_tokens": a.prompt_tokens,
        "depth": image_tokens + a.prompt_tokens,
    }
    files = prepare_llama(a, bin_dir, quant, home, text_f16, logs)
    text, mmproj = files.pop("text"), files.pop("mmproj")
    case["llama"] = files
    log(f"{quant} {size} px: llama-bench")
    kv = files["kv_cache"] = dict(a.llama_kv)
    files["bench"] = measure.llama_bench(
        bin_dir, text, prompt=case["depth"], gen=a.gen_tokens, depth=case["depth"],
        threads=a.threads, repeat=a.repeat, kv_type=kv["llama-bench"], logs=logs, env=llama_env)
    log(f"{quant} {size} px: llama-mtmd-cli")
    files["mtmd"] = measure.mtmd(
        bin_dir, text, mmproj, a.image, image_tokens=image_tokens, text_tokens=a.prompt_tokens,
        threads=a.threads, repeat=a.repeat, kv_type=kv["llama-mtmd-cli"], logs=logs,
        env=llama_env)
    if not a.keep:
        remove(text)
    if a.llama_only:
        return case
    imp_gguf = home / f"imp-{quant}.gguf"
    if not imp_gguf.is_file():
        log(f"{quant}: imp quantize")
        tmp = imp_gguf.with_name(imp_gguf.stem + "-part.gguf")
        measure.imp_quantize(imp, home / "checkpoint", quant, tmp, logs)
        tmp.rename(imp_gguf)
    log(f"{quant} {size} px: imp bench")
    case["imp"] = measure.imp_bench(
        imp, imp_gguf, image=a.image, threads=a.threads, prompt_tokens=a.prompt_tokens,
        gen_tokens=a.gen_tokens, repeat=a.repeat, kv_cache=a.kv_cache, logs=logs)
    if not a.keep:
        remove(imp_gguf)
    return case


def rewrite(path: Path, out: Path) -> None:
    """Tables and chart from saved measurements; llama-mtmd-cli's raw runs are summarized anew."""
    result = json.loads(path.read_text())
    for case in result["cases"]:
        mtmd = case["llama"]["mtmd"]
        mtmd.update(measure.mtmd_summary(mtmd["runs"]))
    report.write(result, out)
    print(report.markdown(result))


def main() -> None:
    a = parse_args()
    if a.from_json:
        rewrite(a.from_json, a.out)
        return
    bin_dir = llamacpp.build(PEER, Path(sys.executable).parent, a.jobs)
    if a.build_only:
        print(bin_dir)
        return
    source_imp = imp_binary(a)
    llama_env = dict(os.environ)
    llama_env.pop("OMP_WAIT_POLICY", None)
    if a.omp_wait != "unset":
        llama_env["OMP_WAIT_POLICY"] = a.omp_wait.upper()
    a.llama_kv = llama_kv = llama_kv_caches(a.kv_cache)
    flash_attn = ("flash attention on (-fa 1: a quantized V cache needs it)"
                  if any(measure.needs_flash_attn(t) for t in llama_kv.values())
                  else "default flash attention (auto)")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    logs = PEER / "logs" / stamp
    built = datetime.datetime.fromtimestamp(source_imp.stat().st_mtime).isoformat(timespec="seconds")
    result = {
        "environment": {
            "cpu": cpu_name(),
            "threads": a.threads,
            "kv_cache": a.kv_cache,
            "repeat": a.repeat,
            "llama_cpp": f"vendored in llama-cpp-python {llamacpp.VERSION} (PyPI sdist), Release, "
                         f"-march=native, OpenMP, AMX compiled out ({llamacpp.NO_AMX_FLAGS}), "
                         f"OMP_WAIT_POLICY={llama_env.get('OMP_WAIT_POLICY', 'unset')}, "
                         f"KV cache {report.llama_kv_text(llama_kv)}, {flash_attn}, default batch sizes",
            "llama_cpp_short": f"llama-cpp-python {llamacpp.VERSION}'s vendored tree",
            "imp": f"{imp_version()} (binary built {built})",
            "started": stamp,
            "logs": str(logs),
        },
        "cases": [],
    }
    a.work.mkdir(parents=True, exist_ok=True)
    # A private copy: the checkout's binary may be rebuilt while this long run goes on.
    imp = a.work / "imp"
    shutil.copy2(source_imp, imp)
    try:
        for size in a.sizes:
            # One folder per preset holds the checkpoint and every GGUF made from it.
            home = a.work / PRESETS[size]
            _, text_f16 = prepare_checkpoint(a, imp, PRESETS[size], home, logs)
            for quant in a.quant:
                case = measure_case(a, bin_dir, imp, llama_env, size, quant, home, text_f16, logs)
                result["cases"].append(case)
                # Written after every case, so an interrupted run keeps what it measured.
                report.write(result, a.out)
                print("\n".join(report.table_lines(case)), flush=True)
            if not a.keep:
                remove(home)
    finally:
        if not a.keep:
            remove(a.work)
    paths = report.write(result, a.out)
    print(report.markdown(result))
    for kind, path in paths.items():
        log(f"{kind}: {path}")
    build = PEER / f"llama.cpp-{llamacpp.VERSION}"
    size = sum(f.stat().st_size for f in build.rglob("*") if f.is_file())
    log(f"llama.cpp build cache {build}: {size / 1e6:.0f} MB (kept for the next run)")


if __name__ == "__main__":
    main()
