#!/usr/bin/env python3
"""Runs the static aarch64 `imp` (and `ask`, examples/c/ask.c against its libimp.a) under
qemu-user on the fixture models and compares with transformers and with the x86 build:

- the binary is static (no program interpreter: nothing to install on a phone);
- f32 greedy tokens equal transformers' (expected.json) and the x86 build's, one model per family;
- tokens sampled within a constraint (`--json-object`) equal the x86 build's;
- q4_k tokens equal the x86 build's q4_k tokens, through the NEON kernels with dot products
  (`-cpu max`) and without them (`-cpu cortex-a53`), as `imp info` reports;
- `ask` streams transformers' answer.

Usage: check_aarch64_binary.py AARCH64_IMP X86_IMP AARCH64_ASK   (run by scripts/test-aarch64.sh)
"""

import json
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
MODELS = REPO / "crates/imp/tests/fixtures/models"
FAMILIES = ["imp-v1.5-3b-phi2", "imp-v1.5-2b-qwen1.5", "imp-v1.5-4b-phi3"]
# qemu CPU models: every extension qemu has (NEON dot products among them), and a core without
# dot products.
CPUS = {"max": "NeonDotprod", "cortex-a53": "Neon"}

failures = 0


def check(ok, what, detail=""):
    global failures
    print(f"{'ok  ' if ok else 'FAIL'} {what}" + ("" if ok else f"\n     {detail}"), flush=True)
    failures += not ok


def run(command):
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, command))} failed:\n{result.stderr}")
    return result.stdout


def tokens(command, case, *flags):
    output = run([*command, "run", "--model", case["dir"], "--image", case["image"],
                  "--prompt", case["question"], "--max-new-tokens", len(case["greedy_tokens"]),
                  "--json", *flags])
    return json.loads(output)["tokens"]


def main():
    arm_imp, x86_imp, arm_ask = sys.argv[1:]
    interpreter = subprocess.run(["readelf", "--program-headers", arm_imp],
                                 capture_output=True, text=True).stdout
    check("INTERP" not in interpreter and "AArch64" in run(["readelf", "-h", arm_imp]),
          "imp is a static AArch64 executable", interpreter)

    for name in FAMILIES:
        case = json.loads((MODELS / name / "expected.json").read_text())
        case["dir"] = MODELS / name
        case["image"] = (MODELS / name / case["image"]).resolve()
        arm = ["qemu-aarch64", "-cpu", "max", arm_imp]
        got = tokens(arm, case)
        check(got == case["greedy_tokens"] == tokens([x86_imp], case),
              f"{name}: f32 tokens = transformers' = x86's", got)
        constrained = ["--json-object", "--temperature", "1", "--seed", "3"]
        got = tokens(arm, case, *constrained)
        check(got == tokens([x86_imp], case, *constrained),
              f"{name}: JSON-constrained sampled tokens = x86's", got)
        x86_q4k = tokens([x86_imp], case, "--quant", "q4_k")
        for cpu, isa in CPUS.items():
            arm = ["qemu-aarch64", "-cpu", cpu, arm_imp]
            info = run([*arm, "info", "--model", case["dir"], "--quant", "q4_k"])
            check(f"cpu kernels    {isa} " in info, f"{name}: qemu -cpu {cpu} runs the {isa} kernels",
                  info.splitlines()[-1])
            got = tokens(arm, case, "--quant", "q4_k")
            check(got == x86_q4k, f"{name}: q4_k tokens on {isa} = x86's", f"{got} != {x86_q4k}")
        answer = run(["qemu-aarch64", "-cpu", "max", arm_ask, case["dir"], case["image"],
                      case["question"], json.dumps({"max_new_tokens": len(case["greedy_tokens"])})])
        check(answer == case["text"] + "\n", f"{name}: ask streams transformers' answer", answer)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
