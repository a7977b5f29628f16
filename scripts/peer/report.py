"""Turn the measurements into the side-by-side table (terminal and Markdown), JSON and a chart."""

from __future__ import annotations

import json
from pathlib import Path


def rows(case: dict) -> list[dict]:
    """One row per metric: llama.cpp's value, imp's (None in a llama.cpp-only run), and which way
    is better."""
    lc, imp = case["llama"], case.get("imp")
    bench, mt = lc["bench"], lc["mtmd"]
    depth = case["depth"]
    tg_long = bench[f"tg_d{depth}"]["tok_s"]
    n_img, n_text = case["image_tokens"], case["prompt_tokens"]
    # Each engine's own count of the question's positions (template tokens differ slightly).
    prefill_tokens = f"{mt['prompt_tokens']}" + (f" / {imp['prefill_tokens']}" if imp else "")

    def of_imp(f):
        return f(imp) if imp else None

    def llama_fraction(tok_s: float):
        # llama.cpp's decode against the bandwidth imp measured in the same run.
        return of_imp(lambda i: tok_s * lc["weight_bytes_per_token"] / (i["bandwidth_gb_s"] * 1e9))

    return [
        {"metric": f"image encode: vision + projector, {n_img} tokens (s)", "better": "lower",
         "llama": mt["encode_s"], "imp": of_imp(lambda i: i["vision_s"] + i["projector_s"])},
        {"metric": f"time to first token: image + {n_text} text tokens (s)", "better": "lower",
         "llama": mt["ttft_s"], "imp": of_imp(lambda i: i["ttft_s"])},
        {"metric": f"prefill in the image question, {prefill_tokens} tokens (tok/s)",
         "better": "higher", "llama": mt["prefill_tok_s"], "imp": of_imp(lambda i: i["prefill_tok_s"])},
        {"metric": f"prefill, llama-bench pp{bench['pp_d0']['tokens']} (tok/s)",
         "better": "higher", "llama": bench["pp_d0"]["tok_s"],
         "imp": of_imp(lambda i: i["prefill_tok_s"])},
        {"metric": f"decode after the prompt, depth {depth} (tok/s)", "better": "higher",
         "key": "decode_long", "llama": tg_long, "imp": of_imp(lambda i: i["decode_tok_s"])},
        {"metric": "decode, short context (tok/s)", "better": "higher", "key": "decode_short",
         "llama": bench["tg_d0"]["tok_s"], "imp": of_imp(lambda i: i["short_context_decode_tok_s"])},
        {"metric": "weights read per decoded token (MB)", "better": "lower", "size": True,
         "llama": lc["weight_bytes_per_token"] / 1e6,
         "imp": of_imp(lambda i: i["weight_bytes_per_token"] / 1e6)},
        {"metric": "decode after the prompt / bandwidth bound (imp's measured bandwidth / weight "
                   "bytes per token)",
         "better": "higher", "fraction": True, "key": "bound_long",
         "llama": llama_fraction(tg_long),
         "imp": of_imp(lambda i: i["decode_fraction_of_bound"])},
        {"metric": "decode, short context / bandwidth bound", "better": "higher", "fraction": True,
         "key": "bound_short", "llama": llama_fraction(bench["tg_d0"]["tok_s"]),
         "imp": of_imp(lambda i: i["short_context_decode_tok_s"] / i["bandwidth_bound_tok_s"])},
        {"metric": "peak resident memory (GB)", "better": "lower", "size": True,
         "llama": mt["peak_rss_bytes"] / 1e9, "imp": of_imp(lambda i: i["peak_rss_bytes"] / 1e9)},
    ]


def ratio(row: dict) -> float | None:
    if row["imp"] is None or row["llama"] is None:
        return None
    return row["imp"] / row["llama"]


def verdict(row: dict) -> str:
    """imp relative to llama.cpp, in words, whichever way the metric is read."""
    r = ratio(row)
    if r is None or row.get("fraction") or row.get("size"):
        return ""
    speedup = 1 / r if row["better"] == "lower" else r
    if speedup >= 1:
        return f"imp {speedup:.2f}x faster"
    return f"imp {1 / speedup:.2f}x slower"


def fmt(value: float | None, fraction: bool = False) -> str:
    if value is None:
        return "n/a"
    if fraction:
        return f"{100 * value:.0f}%"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def llama_kv_text(kv: dict[str, str]) -> str:
    """llama.cpp's KV cache type: one, or each tool's where they differ."""
    if len(set(kv.values())) == 1:
        return next(iter(kv.values()))
    return ", ".join(f"{t} in {tool}" for tool, t in kv.items())


def kv_text(case: dict) -> str:
    """Each engine's KV cache, imp's as its bench reports it (runs from before --kv-cache have
    none recorded)."""
    kv = case["llama"].get("kv_cache")
    if not kv:
        return ""
    imp = case.get("imp")
    imp_part = f", imp {imp.get('kv_cache', case['kv_cache'])}" if imp else ""
    return f"; KV cache: llama.cpp {llama_kv_text(kv)}{imp_part}"


def case_title(case: dict) -> str:
    lc, imp = case["llama"], case.get("imp")
    imp_part = f"imp `{imp['quant']}` ({Path(imp['model']).name})" if imp else "imp not measured"
    return (f"{case['quant']}, {case['image_size']} px ({case['image_tokens']} visual tokens): "
            f"llama.cpp text {lc['text_type']}, mmproj {lc['mmproj_type']}; {imp_part}"
            f"{kv_text(case)}")


def table_lines(case: dict) -> list[str]:
    lines = [
        f"### {case_title(case)}",
        "",
        "| metric | better | llama.cpp | imp | imp / llama.cpp | |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows(case):
        frac = r.get("fraction", False)
        q = ratio(r)
        lines.append(f"| {r['metric']} | {r['better']} | {fmt(r['llama'], frac)} | "
                     f"{fmt(r['imp'], frac)} | {'n/a' if q is None else f'{q:.2f}'} | {verdict(r)} |")
    lc, imp = case["llama"], case.get("imp")
    notes = []
    if imp:
        notes.append(
            f"imp measured {imp['bandwidth_gb_s']:.1f} GB/s of memory bandwidth in its run: decode "
            f"bound {imp['bandwidth_bound_tok_s']:.2f} tok/s for imp's "
            f"{imp['weight_bytes_per_token'] / 1e6:.0f} MB per token, "
            f"{imp['bandwidth_gb_s'] * 1e9 / lc['weight_bytes_per_token']:.2f} tok/s for "
            f"llama.cpp's {lc['weight_bytes_per_token'] / 1e6:.0f} MB.")
    notes.append(f"1-minute load average during the measured runs: llama.cpp {load_text(lc)}"
                 + (f", imp {load_text(imp)}." if imp else "."))
    return lines + ["", " ".join(notes), ""]


def load_text(side: dict) -> str:
    loads = [side["load"]] if "load" in side else []
    loads += [v for k, v in side.get("bench", {}).items() if k.startswith("load_")]
    loads += [side["mtmd"]["load"]] if "mtmd" in side else []
    return f"{min(l['min'] for l in loads):.1f}-{max(l['max'] for l in loads):.1f}"


def isa_text(result: dict) -> str:
    """The instruction-set paths imp's kernels took, as `imp bench --json` reports them."""
    paths = {json.dumps(c["imp"]["isa"], sort_keys=True) for c in result["cases"]
             if c.get("imp", {}).get("isa")}
    if not paths:
        return "not recorded"
    return "; ".join(f"block matmul {isa.get('block_matmul', '?')}, fused float "
                     f"{isa.get('fused', '?')}" for isa in map(json.loads, sorted(paths)))


def decode_lines(result: dict) -> list[str]:
    """Decode of every measured format side by side (the q8_0 rows beside the q4_k ones), with
    each engine's fraction of the bandwidth bound."""

    def cell(tok_s: float | None, fraction: float | None) -> str:
        return fmt(tok_s) + (f" ({fmt(fraction, True)})" if fraction is not None else "")

    lines = [
        "### Decode by format (tok/s; in brackets, the fraction of the bandwidth bound)",
        "",
        "| format | image | KV cache | short context: llama.cpp | imp | after the prompt: "
        "llama.cpp | imp |",
        "|---|---|---|---|---|---|---|",
    ]
    for case in result["cases"]:
        r = {row["key"]: row for row in rows(case) if "key" in row}
        cells = [cell(r[f"decode_{n}"][side], r[f"bound_{n}"][side])
                 for n in ("short", "long") for side in ("llama", "imp")]
        lines.append(f"| {case['quant']} | {case['image_size']} px, depth {case['depth']} | "
                     f"{case.get('kv_cache', 'not recorded')} | {' | '.join(cells)} |")
    return lines + [""]


def markdown(result: dict) -> str:
    env = result["environment"]
    head = [
        "## imp vs llama.cpp (random-weight Imp-v1.5-3B, the same weights in both engines)",
        "",
        f"CPU: {env['cpu']}. imp's kernel paths: {isa_text(result)}. KV cache: "
        f"{env.get('kv_cache', 'not recorded')}.",
        "",
        f"{env['threads']} threads for both engines. llama.cpp: {env['llama_cpp']}. "
        f"imp: {env['imp']}. Medians of {env['repeat']} runs after a warm-up (llama-bench: means "
        f"of {env['repeat']}). Ratios are imp / llama.cpp: for times, below 1 means imp is "
        "faster; for rates, above 1 means imp is faster. The bandwidth bound uses the memory "
        "bandwidth imp bench measures (a 1 GiB streaming read) in the same run; on a loaded "
        "machine the probe can read low, so a fraction above 100% means the bound was understated.",
        "",
    ]
    body = [line for case in result["cases"] for line in table_lines(case)]
    summary = decode_lines(result) if result["cases"] else []
    return "\n".join(head + body + summary) + "\n"


def chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = result["cases"]
    labels = [f"{c['quant']}\n{c['image_size']} px" for c in cases]
    panels = [
        ("image encode (s, lower is better)", 0),
        ("time to first token (s, lower is better)", 1),
        ("prefill in the image question (tok/s)", 2),
        ("decode after the prompt (tok/s)", 4),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    width = 0.38
    xs = list(range(len(cases)))
    for ax, (title, index) in zip(axes.flat, panels):
        picked = [rows(c)[index] for c in cases]
        ax.bar([x - width / 2 for x in xs], [p["llama"] for p in picked], width,
               label="llama.cpp", color="#7f7f7f")
        bars = ax.bar([x + width / 2 for x in xs], [p["imp"] or 0 for p in picked], width,
                      label="imp", color="#1f77b4")
        for bar, p in zip(bars, picked):
            q = ratio(p)
            if q is not None:
                ax.annotate(f"{q:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xticks(xs, labels, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend()
    env = result["environment"]
    fig.suptitle(f"imp vs llama.cpp ({env['llama_cpp_short']}), {env['threads']} threads, "
                 "random-weight Imp-v1.5-3B; labels: imp / llama.cpp", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(result: dict, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "comparison.json",
        "markdown": out_dir / "comparison.md",
        "chart": out_dir / "comparison.png",
    }
    paths["json"].write_text(json.dumps(result, indent=1) + "\n")
    paths["markdown"].write_text(markdown(result))
    if result["cases"]:
        chart(result, paths["chart"])
    return paths
