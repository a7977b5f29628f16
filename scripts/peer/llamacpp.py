"""Fetch llama.cpp from the llama-cpp-python source distribution on PyPI and build its tools.

The sdist vendors a complete llama.cpp tree under vendor/llama.cpp; taking it from there means the
only network source is PyPI. The build is cached under target/peer: a rebuild happens only when
the pinned version or the build flags change (ninja then recompiles nothing that is up to date).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

VERSION = "0.3.36"
SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
TOOLS = ("llama-bench", "llama-mtmd-cli", "llama-quantize")

# The AMX kernels of this llama.cpp crash on this machine (a known upstream bug), so they are
# compiled out both by option and by compiler flag, whatever -march=native would enable.
NO_AMX_FLAGS = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
CMAKE_OPTIONS = {
    "CMAKE_BUILD_TYPE": "Release",
    "CMAKE_C_FLAGS": NO_AMX_FLAGS,
    "CMAKE_CXX_FLAGS": NO_AMX_FLAGS,
    "BUILD_SHARED_LIBS": "OFF",
    "GGML_NATIVE": "ON",
    "GGML_AMX_TILE": "OFF",
    "GGML_AMX_INT8": "OFF",
    "GGML_AMX_BF16": "OFF",
    "GGML_CCACHE": "OFF",
    "GGML_OPENMP": "ON",
    # Nothing that could reach the network at configure or build time (the server's web UI
    # fetches prebuilt assets; TLS is only for downloading models).
    "LLAMA_BUILD_SERVER": "OFF",
    "LLAMA_BUILD_APP": "OFF",
    "LLAMA_BUILD_UI": "OFF",
    "LLAMA_USE_PREBUILT_UI": "OFF",
    "LLAMA_OPENSSL": "OFF",
    "LLAMA_BUILD_TESTS": "OFF",
    "LLAMA_BUILD_EXAMPLES": "OFF",
}
# Large folders of the vendored tree that no build step reads.
SKIP_DIRS = ("models/", "docs/", "media/")


def log(msg: str) -> None:
    print(f"[llama.cpp] {msg}", file=sys.stderr, flush=True)


def sdist_url(version: str) -> tuple[str, str]:
    """The sdist's URL and sha256 from PyPI's JSON API.

    The per-version endpoint is tried first; some PyPI mirrors only serve the project endpoint,
    and some give file URLs relative to the JSON's address.
    """
    for api in (
        f"https://pypi.org/pypi/llama-cpp-python/{version}/json",
        "https://pypi.org/pypi/llama-cpp-python/json",
    ):
        try:
            with urllib.request.urlopen(api, timeout=60) as r:
                meta = json.load(r)
        except (urllib.error.URLError, json.JSONDecodeError) as e:
            log(f"{api}: {e}")
            continue
        files = meta["urls"] if api.endswith(f"/{version}/json") else meta["releases"].get(version, [])
        for f in files:
            if f["packagetype"] == "sdist":
                return urllib.parse.urljoin(api, f["url"]), f["digests"]["sha256"]
    raise SystemExit(f"no sdist of llama-cpp-python {version} found on PyPI")


def fetch_sdist(cache: Path, version: str = VERSION, sha256: str = SHA256) -> Path:
    tarball = cache / f"llama_cpp_python-{version}.tar.gz"
    if tarball.is_file() and file_sha256(tarball) == sha256:
        return tarball
    url, listed = sdist_url(version)
    if listed != sha256:
        raise SystemExit(f"PyPI lists sha256 {listed} for {version}, pinned {sha256}: refusing")
    log(f"downloading {url}")
    cache.mkdir(parents=True, exist_ok=True)
    part = tarball.with_suffix(".part")
    with urllib.request.urlopen(url, timeout=600) as r, open(part, "wb") as out:
        shutil.copyfileobj(r, out, 1 << 20)
    got = file_sha256(part)
    if got != sha256:
        part.unlink()
        raise SystemExit(f"sha256 mismatch for {url}: got {got}, expected {sha256}")
    part.rename(tarball)
    return tarball


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def extract_vendor(tarball: Path, dest: Path, version: str = VERSION) -> Path:
    """Unpacks vendor/llama.cpp (only) into dest; returns the source folder."""
    if (dest / "CMakeLists.txt").is_file():
        return dest
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    tmp = dest.with_name(dest.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"extracting {prefix} from {tarball.name}")
    with tarfile.open(tarball) as tar:
        members = []
        for m in tar.getmembers():
            if not m.name.startswith(prefix) or m.name == prefix.rstrip("/"):
                continue
            rel = m.name[len(prefix):]
            # The sdist's .git entry points into the parent repository's .git, absent here.
            if rel == ".git" or rel.startswith(SKIP_DIRS):
                continue
            m.name = rel
            members.append(m)
        tar.extractall(tmp, members=members, filter="data")
    tmp.rename(dest)
    return dest


def build(root: Path, venv_bin: Path, jobs: int) -> Path:
    """Builds TOOLS under root (cached); returns the folder holding the binaries."""
    tarball = fetch_sdist(root / "cache")
    src = extract_vendor(tarball, root / f"llama.cpp-{VERSION}" / "src")
    build_dir = src.parent / "build"
    bin_dir = build_dir / "bin"
    stamp = build_dir / "peer-build.json"
    want = {"version": VERSION, "options": CMAKE_OPTIONS, "tools": list(TOOLS)}
    if stamp.is_file() and json.loads(stamp.read_text()) == want and all(
        (bin_dir / t).is_file() for t in TOOLS
    ):
        log(f"cached build in {bin_dir} (AMX compiled out: {NO_AMX_FLAGS})")
        return bin_dir

    log(f"building {', '.join(TOOLS)} from llama-cpp-python {VERSION}'s vendored llama.cpp")
    log(f"Release, -march=native, AMX compiled out: GGML_AMX_*=OFF and {NO_AMX_FLAGS}")
    env = dict(os.environ, PATH=f"{venv_bin}{os.pathsep}{os.environ['PATH']}")
    configure = [
        str(venv_bin / "cmake"), "-S", str(src), "-B", str(build_dir), "-G", "Ninja",
        f"-DCMAKE_MAKE_PROGRAM={venv_bin / 'ninja'}",
        # Build info would otherwise come from the enclosing repository's git.
        "-DLLAMA_BUILD_COMMIT=llama-cpp-python-" + VERSION, "-DLLAMA_BUILD_NUMBER=0",
    ] + [f"-D{k}={v}" for k, v in CMAKE_OPTIONS.items()]
    run_logged(configure, build_dir.parent / "configure.log", env)
    compile_cmd = ["nice", "-n", "19", str(venv_bin / "cmake"), "--build", str(build_dir),
                   "-j", str(jobs), "--target", *TOOLS]
    start = time.time()
    run_logged(compile_cmd, build_dir.parent / "build.log", env)
    log(f"built in {time.time() - start:.0f} s")
    stamp.write_text(json.dumps(want, indent=1))
    return bin_dir


def run_logged(cmd: list[str], log_file: Path, env: dict) -> None:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w") as out:
        p = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    if p.returncode != 0:
        tail = log_file.read_text(errors="replace").splitlines()[-30:]
        raise SystemExit(f"{cmd[0]} failed ({p.returncode}); see {log_file}:\n" + "\n".join(tail))

