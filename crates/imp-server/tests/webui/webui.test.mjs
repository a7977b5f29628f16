// The chat page of `imp serve` in a real browser: Debian's chromium driven by playwright-core,
// against a tiny fixture model. Run from the repository root after `cargo build -p imp-cli`:
//
//   npm ci --prefix crates/imp-server/tests/webui
//   node crates/imp-server/tests/webui/webui.test.mjs
//
// IMP_BIN overrides the binary (default target/debug/imp), CHROMIUM the browser
// (/usr/bin/chromium); SCREENSHOT=docs/webui.png writes the screenshot of a conversation.

import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../../..");
const IMP = process.env.IMP_BIN ? resolve(process.env.IMP_BIN) : join(ROOT, "target/debug/imp");
const FIXTURES = join(ROOT, "crates/imp/tests/fixtures");
const MODEL = join(FIXTURES, "models/imp-v1.5-4b-phi3");
const IMAGE = join(FIXTURES, "images/skimage_chelsea.png");
const QUESTION = "What is shown in this image?";
const SETTINGS = { temperature: "0.8", seed: "7", maxTokens: "24" };
const TIMEOUT_MS = 60_000;

/** `imp run --json` for the page's question and settings. */
function impRun() {
  const out = spawnSync(
    IMP,
    ["run", "--model", MODEL, "--image", IMAGE, "--prompt", QUESTION, "--json",
      "--temperature", SETTINGS.temperature, "--seed", SETTINGS.seed,
      "--max-new-tokens", SETTINGS.maxTokens],
    { encoding: "utf8", timeout: TIMEOUT_MS },
  );
  assert.equal(out.status, 0, `imp run failed: ${out.stderr}`);
  return JSON.parse(out.stdout);
}

/** `imp serve` on a free port; resolves with its process and URL. */
function startServer(cacheDir) {
  const server = spawn(IMP, ["serve", "--model", MODEL, "--port", "0", "--cache-dir", cacheDir], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  return new Promise((resolvePromise, reject) => {
    let seen = "";
    const onData = (chunk) => {
      seen += chunk;
      const match = seen.match(/on (http:\/\/\S+)/);
      if (match) {
        // Keep draining stderr so that the server never blocks on a full pipe.
        server.stderr.off("data", onData);
        server.stderr.resume();
        resolvePromise({ server, url: match[1] });
      }
    };
    server.stderr.on("data", onData);
    server.on("exit", (code) => reject(new Error(`imp serve exited (${code}): ${seen}`)));
  });
}

async function setSettings(page, settings) {
  await page.locator("#settings summary").click();
  await page.fill("#temperature", settings.temperature);
  await page.fill("#seed", settings.seed);
  await page.fill("#max-tokens", settings.maxTokens);
}

/** Sends `text` and waits for the answer's statistics (the usage chunk of the stream). */
async function ask(page, text, { pressEnter = false } = {}) {
  const answers = page.locator(".message.assistant");
  const before = await answers.count();
  await page.fill("#question", text);
  if (pressEnter) await page.press("#question", "Enter");
  else await page.click("#send");
  const answer = answers.nth(before);
  await answer.locator(".stats[data-cached-tokens]").waitFor({ timeout: TIMEOUT_MS });
  return {
    text: await answer.locator(".answer").textContent(),
    stats: await answer.locator(".stats").textContent(),
    cached: Number(await answer.locator(".stats").getAttribute("data-cached-tokens")),
  };
}

async function main() {
  const expected = impRun();
  const cacheDir = mkdtempSync(join(tmpdir(), "imp-webui-"));
  const { server, url } = await startServer(cacheDir);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    // This machine has no network: keep chromium from trying to reach Google's services.
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 900, height: 760 } });
    const pageErrors = [];
    page.on("pageerror", (error) => pageErrors.push(error.message));
    await page.goto(url);
    await page.locator("#model-name").filter({ hasText: "imp-v1.5-4b-phi3" }).waitFor();
    await setSettings(page, SETTINGS);

    // Picked with the file chooser: the streamed answer is `imp run`'s, word for word.
    await page.setInputFiles("#file", IMAGE);
    await page.locator("#attachment").waitFor({ state: "visible" });
    const first = await ask(page, QUESTION);
    assert.equal(first.text, expected.text, "the page's answer differs from imp run --json");
    assert.equal(first.cached, 0, `a first question has nothing cached: ${first.stats}`);
    assert.match(first.stats, /s to first token · [\d.]+ tokens\/s · \d+ tokens/);
    console.log(`ok: first answer = imp run's (${JSON.stringify(first.text)}); ${first.stats}`);

    // The follow-up reuses the conversation cache.
    const second = await ask(page, "Describe it in more detail.", { pressEnter: true });
    assert.ok(second.cached > 0, `the second turn reports no cached tokens: ${second.stats}`);
    console.log(`ok: second turn; ${second.stats}`);
    if (process.env.SCREENSHOT) {
      await page.screenshot({ path: resolve(process.env.SCREENSHOT) });
      console.log(`wrote ${process.env.SCREENSHOT}`);
    }

    // Stop: the answer so far stays, and the conversation goes on from it.
    await page.fill("#max-tokens", "100000");
    const answers = page.locator(".message.assistant");
    const before = await answers.count();
    await page.fill("#question", "Write a long story about it.");
    await page.click("#send");
    await answers.nth(before).locator(".answer").filter({ hasText: /\S/ }).waitFor();
    await page.click("#send");
    await answers.nth(before).locator(".stats").filter({ hasText: "stopped" }).waitFor();
    assert.equal(await page.textContent("#send"), "Send");
    console.log("ok: stop");

    // Dropped on the page, then a broken image: the server's message is shown, and the
    // question comes back to the text box.
    await page.click("#new-chat");
    assert.equal(await answers.count(), 0);
    const dropped = await page.evaluateHandle((bytes) => {
      const transfer = new DataTransfer();
      transfer.items.add(new File([new Uint8Array(bytes)], "chelsea.png", { type: "image/png" }));
      return transfer;
    }, [...readFileSync(IMAGE)]);
    await page.dispatchEvent("body", "drop", { dataTransfer: dropped });
    await page.locator("#attachment-name").filter({ hasText: "chelsea.png" }).waitFor();
    await page.click("#remove-image");
    await page.setInputFiles("#file", {
      name: "broken.png",
      mimeType: "image/png",
      buffer: Buffer.from("these bytes are not a PNG"),
    });
    await page.locator("#attachment").waitFor({ state: "visible" });
    await page.fill("#question", QUESTION);
    await page.click("#send");
    const error = page.locator(".message.error");
    await error.waitFor({ timeout: TIMEOUT_MS });
    const message = await error.textContent();
    assert.match(message, /image/i, `the error does not name the image: ${message}`);
    assert.equal(await page.inputValue("#question"), QUESTION);
    assert.equal(await page.textContent("#attachment-name"), "broken.png");
    assert.equal(await answers.count(), 0);
    console.log(`ok: bad image → ${JSON.stringify(message)}`);

    assert.deepEqual(pageErrors, [], "the page threw");
  } finally {
    await browser.close();
    server.kill("SIGTERM");
    rmSync(cacheDir, { recursive: true, force: true });
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
