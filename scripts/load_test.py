"""Load test of `imp serve`: many concurrent streaming clients over loopback, for a bounded time.

Starts `imp serve` on a free loopback port with a tiny fixture model, runs CLIENTS streaming
clients (mixed questions about a few images, some of them follow-up turns) for DURATION seconds
or MAX_REQUESTS requests, whichever comes first, and reports requests served, errors, time to
first token (p50/p99), tokens/s, and the server's resident memory over time. Exits 1 when any
request failed or memory kept growing after the warm-up.

    cargo build --release -p imp-cli
    python3 -m venv .venv-ci && .venv-ci/bin/pip install openai
    .venv-ci/bin/python scripts/load_test.py --duration 180

Not part of CI: it takes minutes.
"""

import argparse
import asyncio
import base64
import random
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import openai

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "crates/imp/tests/fixtures"
IMAGES = ["skimage_chelsea.png", "skimage_coins.png", "skimage_rocket.jpg", "pillow_hopper.jpg"]
QUESTIONS = ["What is shown in this image?", "Describe the picture.", "What colours do you see?"]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--imp", default=str(ROOT / "target/release/imp"))
    parser.add_argument("--model", default=str(FIXTURES / "models/imp-v1.5-4b-phi3"))
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=180.0, help="seconds")
    parser.add_argument("--max-requests", type=int, default=200_000)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--server-log", default="/tmp/imp-load-test-server.log",
                        help="where the server's stderr goes")
    return parser.parse_args()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Stats:
    def __init__(self):
        self.served = 0
        self.errors = []
        self.ttft = []
        self.tokens = 0
        self.started = 0


async def client_loop(client, model, images, args, deadline, stats, rng):
    while time.monotonic() < deadline and stats.started < args.max_requests:
        stats.started += 1
        url = rng.choice(images)
        messages = [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": rng.choice(QUESTIONS)},
        ]}]
        turns = 2 if rng.random() < 0.3 else 1
        for turn in range(turns):
            start = time.monotonic()
            first = None
            answer = []
            try:
                stream = await client.chat.completions.create(
                    model=model, messages=messages, stream=True,
                    stream_options={"include_usage": True},
                    max_tokens=args.max_tokens, temperature=0.7, seed=rng.randrange(1 << 31),
                )
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content and first is None:
                        first = time.monotonic() - start
                    if chunk.choices:
                        answer.append(chunk.choices[0].delta.content or "")
                    if chunk.usage:
                        stats.tokens += chunk.usage.completion_tokens
                stats.served += 1
                if first is not None:
                    stats.ttft.append(first)
            except Exception as error:  # every failure counts, whatever its kind
                stats.errors.append(repr(error))
                break
            if turn + 1 < turns:
                messages += [{"role": "assistant", "content": "".join(answer).strip()},
                             {"role": "user", "content": rng.choice(QUESTIONS)}]


async def sample_memory(pid, deadline, samples):
    while time.monotonic() < deadline:
        samples.append((time.monotonic(), rss_bytes(pid)))
        await asyncio.sleep(1.0)


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


async def main():
    args = parse_args()
    server = subprocess.Popen(
        [args.imp, "serve", "--model", args.model, "--host", "127.0.0.1", "--port", "0",
         "--parallel", str(args.parallel), "--queue", str(args.clients * 2)],
        stderr=subprocess.PIPE, text=True,
    )
    line = server.stderr.readline()
    match = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
    if not match:
        server.kill()
        sys.exit(f"imp serve did not start: {line}")
    log = open(args.server_log, "w")
    log.write(line)

    def copy_log():
        for rest in server.stderr:
            log.write(rest)
            log.flush()

    threading.Thread(target=copy_log, daemon=True).start()
    base = match.group(1)
    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=120)
    model = (await client.models.list()).data[0].id
    images = [f"data:image/png;base64,{base64.b64encode((FIXTURES / 'images' / n).read_bytes()).decode()}"
              for n in IMAGES]

    stats = Stats()
    samples = []
    start = time.monotonic()
    deadline = start + args.duration
    memory = asyncio.create_task(sample_memory(server.pid, deadline, samples))
    await asyncio.gather(*(client_loop(client, model, images, args, deadline, stats, random.Random(i))
                           for i in range(args.clients)))
    elapsed = time.monotonic() - start
    memory.cancel()
    samples.append((time.monotonic(), rss_bytes(server.pid)))
    with urllib.request.urlopen(f"{base}/metrics", timeout=30) as response:
        metrics = response.read().decode()
    server.terminate()
    server.wait(timeout=60)

    warm = [rss for t, rss in samples if t - start >= 0.2 * elapsed]
    rss_warm, rss_end, rss_peak = warm[0], samples[-1][1], max(rss for _, rss in samples)
    mib = 1 << 20
    print(f"clients {args.clients}, parallel {args.parallel}, {elapsed:.0f} s, max_tokens {args.max_tokens}")
    print(f"requests served  {stats.served}")
    print(f"errors           {len(stats.errors)}")
    print(f"TTFT p50 / p99   {percentile(stats.ttft, 0.5) * 1000:.1f} / "
          f"{percentile(stats.ttft, 0.99) * 1000:.1f} ms")
    print(f"tokens           {stats.tokens} ({stats.tokens / elapsed:.0f} tokens/s overall)")
    print(f"server RSS       after warm-up {rss_warm / mib:.1f} MiB, end {rss_end / mib:.1f} MiB, "
          f"peak {rss_peak / mib:.1f} MiB")
    for line in metrics.splitlines():
        if re.match(r"imp_(image_cache|kv_cache_(hits|misses)|requests_total|requests_cancelled)", line):
            print(f"  {line}")
    step = max(1, len(samples) // 12)
    print("server RSS over time (s: MiB): " + ", ".join(
        f"{t - start:.0f}: {rss / mib:.0f}" for t, rss in samples[::step]))
    for error in stats.errors[:5]:
        print(f"  error: {error}")
    # Flat: no more than 10 % (and 16 MiB) above the level reached after the warm-up.
    grew = rss_end > rss_warm * 1.1 and rss_end - rss_warm > 16 * mib
    if stats.errors or grew:
        sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
