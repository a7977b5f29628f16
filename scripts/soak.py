"""Soak test of `imp serve`: hours of traffic in minutes, with faults, over loopback.

Starts `imp serve` on the tiny fixture model and runs CLIENTS threads for DURATION seconds, each
mixing streamed questions about images (data: URLs, file:// URLs, fresh images that miss every
cache), follow-up turns, streams cancelled mid-way, oversized and malformed requests, and slow
clients that trickle their body and read slowly. Faults, at fractions of the run:

  * 40 %: the disk image cache becomes unwritable (chmod 0o555; as root, where that does not
    stop writes, the cache folder is replaced by a file): serving must go on;
  * 50 %: a request every millisecond for FLOOD seconds on top of the clients (the queue holds
    CLIENTS requests): 429s expected, no memory growth;
  * end: SIGTERM under load: every request the server accepted must be answered (or refused
    with a status), and the server must exit 0 within its grace period.

Reports unexpected statuses and broken streams (errors), time to first token (p50/p99), and the
server's RSS over time (from /proc/PID/status); exits 1 on any error, on RSS more than 10 %
above its level after the warm-up (the first 20 %), or when a fault did not have its effect.
Python 3 standard library only (scripts/load_test.py measures throughput with the openai
client; this one looks for leaks, hangs and wrong statuses).

    cargo build --release -p imp-cli
    python3 scripts/soak.py --duration 600 --clients 64
"""

import argparse
import base64
import http.client
import json
import random
import re
import selectors
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "crates/imp/tests/fixtures"
IMAGES = ["skimage_chelsea.png", "skimage_coins.png", "skimage_rocket.jpg", "pillow_hopper.jpg"]
QUESTIONS = ["What is shown in this image?", "Describe the picture.", "What colours do you see?"]
MAX_BODY = 1 << 20
MIB = 1 << 20


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_imp = ROOT / "target/release/imp"
    if not default_imp.exists():
        default_imp = ROOT / "target/debug/imp"
    parser.add_argument("--imp", default=str(default_imp))
    parser.add_argument("--model", default=str(FIXTURES / "models/imp-v1.5-4b-phi3"))
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds")
    parser.add_argument("--flood", type=float, default=60.0,
                        help="seconds of the 1 request/ms flood (at most a quarter of the run)")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--grace", type=float, default=60.0, help="--grace-period of the server")
    parser.add_argument("--server-log", default="/tmp/imp-soak-server.log")
    return parser.parse_args()


def rss_bytes(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def random_png(rng, size=24):
    """A valid PNG no cache has seen."""
    raw = b"".join(b"\0" + rng.randbytes(size * 3) for _ in range(size))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def data_url(data):
    return "data:image/png;base64," + base64.b64encode(data).decode()


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.statuses = Counter()
        self.kinds = Counter()
        self.errors = []
        self.ttft = []
        self.flood = Counter()

    def record(self, kind, status):
        with self.lock:
            self.kinds[kind] += 1
            self.statuses[status] += 1

    def error(self, message):
        with self.lock:
            self.errors.append(message)


class Server:
    def __init__(self, args, cache_dir):
        self.cache_dir = cache_dir
        command = [
            args.imp, "serve", "--model", args.model, "--host", "127.0.0.1", "--port", "0",
            "--parallel", str(args.parallel), "--queue", str(args.clients),
            "--allow-files", str(FIXTURES / "images"), "--cache-dir", cache_dir,
            "--cache-max-bytes", str(4 * MIB), "--image-cache", "16",
            "--max-body-bytes", str(MAX_BODY), "--max-connections", str(args.clients * 2 + 32),
            "--header-timeout", "5", "--body-timeout", "10", "--idle-timeout", "15",
            "--request-timeout", "120", "--grace-period", str(args.grace),
        ]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        line = self.process.stderr.readline()
        match = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
        if not match:
            self.process.kill()
            sys.exit(f"imp serve did not start: {line}")
        self.port = int(match.group(1))
        self.log = open(args.server_log, "w")
        self.log.write(line)
        threading.Thread(target=self.copy_log, daemon=True).start()
        self.model = json.loads(self.get("/v1/models"))["data"][0]["id"]

    def copy_log(self):
        for line in self.process.stderr:
            self.log.write(line)
            self.log.flush()

    def connection(self, timeout=180):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def get(self, path):
        conn = self.connection(30)
        try:
            conn.request("GET", path)
            return conn.getresponse().read().decode()
        finally:
            conn.close()

    def metric(self, name):
        for line in self.get("/metrics").splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None


def stream_chat(server, conn, body, stats, kind, cancel=False, slow=False):
    """Posts a streamed request; the answer's text, or None when it was not a 200 stream."""
    payload = json.dumps(body).encode()
    start = time.monotonic()
    if slow:
        # Trickled within the body timeout.
        conn.putrequest("POST", "/v1/chat/completions")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(payload)))
        conn.endheaders()
        step = max(1, len(payload) // 8)
        for i in range(0, len(payload), step):
            conn.send(payload[i:i + step])
            time.sleep(0.05)
    else:
        conn.request("POST", "/v1/chat/completions", payload, {"Content-Type": "application/json"})
    response = conn.getresponse()
    stats.record(kind, response.status)
    if response.status != 200:
        text = response.read().decode(errors="replace")
        if response.status not in (429, 503):
            stats.error(f"{kind}: {response.status} {text[:200]}")
        if response.status == 429:
            time.sleep(random.uniform(0.05, 0.3))  # as a client backs off
        return None
    answer, first, done = [], None, False
    while True:
        line = response.readline()
        if not line:
            break
        if not line.startswith(b"data: "):
            continue
        data = line[6:].strip()
        if data == b"[DONE]":
            done = True
            response.read()  # the chunked ending, so that the connection can carry the next turn
            break
        event = json.loads(data)
        if "error" in event:
            stats.error(f"{kind}: error event {event['error']}")
            return None
        for choice in event.get("choices", []):
            piece = choice["delta"].get("content")
            if piece:
                if first is None:
                    first = time.monotonic() - start
                answer.append(piece)
        if cancel and answer:
            conn.close()
            return None
        if slow:
            time.sleep(0.02)
    if not done:
        stats.error(f"{kind}: the stream ended without [DONE]")
        return None
    if first is not None:
        with stats.lock:
            stats.ttft.append(first)
    return "".join(answer)


def raw_exchange(server, request):
    """Sends raw bytes on a fresh connection; the response status."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(request)
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(1024)
            if not chunk:
                return None
            head += chunk
        return int(head.split(b" ", 2)[1])


def client(server, args, stats, rng, stop, images):
    while not stop.is_set():
        try:
            one_request(server, args, stats, rng, stop, images)
        except (OSError, http.client.HTTPException) as error:
            # After SIGTERM a refused or closed connection is the expected end; before, a failure.
            if not stop.is_set():
                stats.error(repr(error))
            elif not isinstance(error, (ConnectionRefusedError, ConnectionResetError,
                                        BrokenPipeError, http.client.RemoteDisconnected)):
                stats.error(f"during shutdown: {error!r}")


def one_request(server, args, stats, rng, stop, images):
    """One scenario, picked at random."""
    roll = rng.random()
    question = rng.choice(QUESTIONS)
    if roll < 0.05:
        kind = "oversized"
        status = raw_exchange(server, (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: imp\r\nContent-Type: application/json\r\n"
            f"Content-Length: {MAX_BODY * 4}\r\n\r\n").encode())
        stats.record(kind, status)
        if status != 413 and not (status == 503 and stop.is_set()):
            stats.error(f"oversized: {status}")
        return
    if roll < 0.10:
        kind = "malformed"
        conn = server.connection()
        try:
            conn.request("POST", "/v1/chat/completions", b'{"model": 5, "messages": [',
                         {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            stats.record(kind, response.status)
            if response.status != 400:
                stats.error(f"malformed: {response.status}")
        finally:
            conn.close()
        return
    if roll < 0.20:
        url, kind = data_url(random_png(rng)), "fresh image"
    elif roll < 0.35:
        url, kind = f"file://{FIXTURES / 'images' / rng.choice(IMAGES)}", "file image"
    else:
        url, kind = rng.choice(images), "image"
    cancel = 0.35 <= roll < 0.45
    slow = 0.45 <= roll < 0.50
    kind = "cancelled" if cancel else "slow" if slow else kind
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question}]}]
    turns = 2 if rng.random() < 0.3 else 1
    conn = server.connection()
    try:
        for _ in range(turns):
            body = {"model": server.model, "messages": messages, "stream": True,
                    "max_tokens": args.max_tokens, "temperature": 0.7,
                    "seed": rng.randrange(1 << 31)}
            answer = stream_chat(server, conn, body, stats, kind, cancel, slow)
            if answer is None:
                break
            messages += [{"role": "assistant", "content": answer.strip() or "."},
                         {"role": "user", "content": rng.choice(QUESTIONS)}]
    finally:
        conn.close()


def flood(server, stats, seconds):
    """A request every millisecond, each on its own connection, without waiting for answers
    (at most 256 open at once)."""
    body = json.dumps({"model": server.model, "max_tokens": 1,
                       "messages": [{"role": "user", "content": "Hi"}]})
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: imp\r\nConnection: close\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
               ).encode()
    selector = selectors.DefaultSelector()
    end = time.monotonic() + seconds
    tick = time.monotonic()
    while time.monotonic() < end or selector.get_map():
        now = time.monotonic()
        if now > end + 120:
            stats.error(f"flood: {len(selector.get_map())} requests never answered")
            break
        if now < end and now >= tick and len(selector.get_map()) < 256:
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(request)
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, bytearray())
            tick = max(tick + 0.001, now - 0.01)
        for key, _ in selector.select(timeout=0.001):
            try:
                chunk = key.fileobj.recv(4096)
            except OSError:
                chunk = b""
            key.data.extend(chunk)
            if b"\r\n" in key.data or not chunk:
                selector.unregister(key.fileobj)
                key.fileobj.close()
                status = int(key.data.split(b" ", 2)[1]) if b"\r\n" in key.data else None
                with stats.lock:
                    stats.flood[status] += 1
                if status not in (200, 429):
                    stats.error(f"flood: {status}")
    selector.close()


def make_cache_unwritable(cache_dir):
    """chmod 0o555 on the model's cache folder; as root, replace it by a file instead."""
    for folder in Path(cache_dir).iterdir():
        folder.chmod(0o555)
        probe = folder / "probe"
        try:
            probe.write_bytes(b"")
        except OSError:
            continue
        folder.chmod(0o755)
        # Moved away first: the server may be writing into it.
        moved = folder.with_name(folder.name + ".gone")
        folder.rename(moved)
        folder.write_bytes(b"not a folder")
        shutil.rmtree(moved)


def main():
    args = parse_args()
    cache_dir = tempfile.mkdtemp(prefix="imp-soak-cache-")
    server = Server(args, cache_dir)
    try:
        soak(args, server, cache_dir)
    finally:
        if server.process.poll() is None:
            server.process.kill()


def soak(args, server, cache_dir):
    images = [data_url((FIXTURES / "images" / name).read_bytes()) for name in IMAGES]
    stats = Stats()
    stop = threading.Event()
    samples = []
    start = time.monotonic()

    def sample_memory():
        while server.process.poll() is None:
            samples.append((time.monotonic() - start, rss_bytes(server.process.pid)))
            time.sleep(1.0)

    threading.Thread(target=sample_memory, daemon=True).start()
    clients = [threading.Thread(target=client, daemon=True,
                                args=(server, args, stats, random.Random(i), stop, images))
               for i in range(args.clients)]
    for thread in clients:
        thread.start()

    checks = []
    time.sleep(0.4 * args.duration)
    print(f"{time.monotonic() - start:.0f} s: making the cache folder unwritable", flush=True)
    make_cache_unwritable(cache_dir)
    time.sleep(0.1 * args.duration)
    disk = server.metric("imp_image_cache_disk_enabled")
    checks.append(("disk cache switched off after the fault", disk == 0.0))
    flood_seconds = min(args.flood, args.duration / 4)
    print(f"{time.monotonic() - start:.0f} s: flooding for {flood_seconds:.0f} s", flush=True)
    flood_rss = rss_bytes(server.process.pid)
    flood(server, stats, flood_seconds)
    flood_rss_end = rss_bytes(server.process.pid)
    checks.append(("the flood got 429s", stats.flood[429] > 0))
    time.sleep(max(0.0, start + args.duration - time.monotonic()))

    metrics = server.get("/metrics")
    print(f"{time.monotonic() - start:.0f} s: SIGTERM under load", flush=True)
    rss_before_stop = rss_bytes(server.process.pid)
    samples.append((time.monotonic() - start, rss_before_stop))
    server.process.send_signal(signal.SIGTERM)
    stop.set()
    stopped = time.monotonic()
    try:
        code = server.process.wait(timeout=args.grace + 30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        code = "killed"
    exit_seconds = time.monotonic() - stopped
    for thread in clients:
        thread.join(timeout=30)
    checks.append(("exit status 0 after SIGTERM", code == 0))
    checks.append(("clients done after shutdown", not any(t.is_alive() for t in clients)))

    elapsed = stopped - start
    warm = [rss for t, rss in samples if 0.2 * elapsed <= t <= 0.3 * elapsed] or [samples[0][1]]
    rss_warm = max(warm)
    rss_peak = max(rss for _, rss in samples)
    flat = rss_before_stop <= rss_warm * 1.1
    checks.append(("RSS within 10 % of its level after warm-up", flat))

    served = sum(n for status, n in stats.statuses.items() if status == 200)
    print(f"clients {args.clients}, parallel {args.parallel}, {elapsed:.0f} s, "
          f"max_tokens {args.max_tokens}, server {args.imp}")
    print(f"requests         {sum(stats.kinds.values())} ({served} answered 200); "
          f"by kind {dict(stats.kinds)}")
    print(f"statuses         {dict(sorted(stats.statuses.items(), key=str))}")
    print(f"flood            {sum(stats.flood.values())} requests in {flood_seconds:.0f} s: "
          f"{dict(stats.flood)}; RSS {flood_rss / MIB:.1f} -> {flood_rss_end / MIB:.1f} MiB")
    print(f"errors           {len(stats.errors)}")
    print(f"TTFT p50 / p99   {percentile(stats.ttft, 0.5) * 1000:.0f} / "
          f"{percentile(stats.ttft, 0.99) * 1000:.0f} ms ({len(stats.ttft)} streams)")
    print(f"server RSS       after warm-up {rss_warm / MIB:.1f} MiB, before SIGTERM "
          f"{rss_before_stop / MIB:.1f} MiB, peak {rss_peak / MIB:.1f} MiB")
    step = max(1, len(samples) // 12)
    print("server RSS over time (s: MiB): " + ", ".join(
        f"{t:.0f}: {rss / MIB:.0f}" for t, rss in samples[::step]))
    print(f"shutdown         exit {code} {exit_seconds:.1f} s after SIGTERM")
    for line in metrics.splitlines():
        if re.match(r"imp_(image_cache|requests_total|requests_cancelled)", line):
            print(f"  {line}")
    for error in stats.errors[:10]:
        print(f"  error: {error}")
    for name, ok in checks:
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    for folder in Path(cache_dir).iterdir():
        if folder.is_dir():
            folder.chmod(stat.S_IRWXU)
    shutil.rmtree(cache_dir, ignore_errors=True)
    if stats.errors or not all(ok for _, ok in checks):
        sys.exit(1)


if __name__ == "__main__":
    main()
