"use strict";
// The chat page of `imp serve`. It talks to the server only through /v1/models and the
// streamed /v1/chat/completions, as any OpenAI client would; each turn sends the whole
// conversation, and the server's conversation cache recognises the part it has already seen.

const $ = (id) => document.getElementById(id);

/** The conversation so far, as OpenAI messages. */
const history = [];
/** The image for the next question: `{url, name}` with a data: URL. */
let image = null;
/** Aborts the answer being streamed (the Stop button). */
let running = null;
let model = null;

const SETTINGS = ["temperature", "max-tokens", "seed", "api-key"];

function loadSettings() {
  for (const id of SETTINGS) {
    const saved = localStorage.getItem(`imp.${id}`);
    if (saved !== null) $(id).value = saved;
    $(id).addEventListener("change", () => localStorage.setItem(`imp.${id}`, $(id).value));
  }
}

function headers() {
  const result = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) result.Authorization = `Bearer ${key}`;
  return result;
}

/** The server's own message for a failed request. */
async function failure(response) {
  const body = await response.json().catch(() => ({}));
  let message = body.error?.message || `${response.status} ${response.statusText}`;
  if (response.status === 401) message += " Set the API key under Settings.";
  return new Error(message);
}

async function loadModel() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (!response.ok) throw await failure(response);
  const body = await response.json();
  model = body.data[0].id;
  $("model-name").textContent = model;
}

// --- The image: picked, dropped or pasted. ---

function setImage(file) {
  if (!file) return;
  if (!file.type.startsWith("image/")) {
    showError(`${file.name || "The file"} is not an image (${file.type || "unknown type"}).`);
    return;
  }
  const reader = new FileReader();
  reader.onload = () => showAttachment({ url: reader.result, name: file.name || "pasted image" });
  reader.onerror = () => showError(`${file.name}: could not be read.`);
  reader.readAsDataURL(file);
}

function showAttachment(chosen) {
  image = chosen;
  $("preview").src = chosen.url;
  $("attachment-name").textContent = chosen.name;
  $("attachment").hidden = false;
}

function clearAttachment() {
  image = null;
  $("attachment").hidden = true;
  $("preview").removeAttribute("src");
  $("file").value = "";
}

function watchDropsAndPastes() {
  const overlay = $("drop-overlay");
  const carriesFiles = (event) => event.dataTransfer?.types.includes("Files");
  document.addEventListener("dragover", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    overlay.hidden = false;
  });
  document.addEventListener("dragleave", (event) => {
    if (event.relatedTarget === null) overlay.hidden = true;
  });
  document.addEventListener("drop", (event) => {
    overlay.hidden = true;
    if (!carriesFiles(event)) return;
    event.preventDefault();
    setImage(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const item = [...(event.clipboardData?.items || [])].find(
      (i) => i.kind === "file" && i.type.startsWith("image/"),
    );
    if (item) {
      event.preventDefault();
      setImage(item.getAsFile());
    }
  });
}

// --- The conversation view. ---

function append(element) {
  $("hint").hidden = true;
  $("log").append(element);
  element.scrollIntoView({ block: "end" });
  return element;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function addQuestion(text, imageUrl) {
  const view = element("div", "message user");
  if (imageUrl) {
    const img = element("img");
    img.src = imageUrl;
    img.alt = "The image asked about";
    view.append(img);
  }
  view.append(element("div", "text", text));
  return append(view);
}

function addAnswer() {
  const root = element("div", "message assistant");
  const text = element("div", "text answer");
  const stats = element("div", "stats");
  root.append(text, stats);
  append(root);
  return { root, text, stats };
}

function showError(message) {
  const view = element("div", "message error", message);
  view.setAttribute("role", "alert");
  append(view);
}

function showStats(view, usage, timings, finishReason) {
  const parts = [];
  if (timings) {
    parts.push(`${(timings.time_to_first_token_ms / 1000).toFixed(2)} s to first token`);
    if (timings.decode_tokens > 0) {
      parts.push(`${timings.decode_tokens_per_second.toFixed(1)} tokens/s`);
    }
  }
  const cached = usage.prompt_tokens_details?.cached_tokens ?? 0;
  parts.push(`${usage.completion_tokens} tokens`);
  parts.push(`${cached} of ${usage.prompt_tokens} prompt tokens cached`);
  if (finishReason === "length") parts.push("cut at the token limit");
  view.stats.textContent = parts.join(" · ");
  view.stats.dataset.cachedTokens = cached;
  view.stats.dataset.completionTokens = usage.completion_tokens;
}

// --- Asking. ---

/** The JSON objects of a server-sent event stream, until `[DONE]`. */
async function* serverEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const data = buffer
        .slice(0, end)
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      buffer = buffer.slice(end + 2);
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

function request(message) {
  const body = {
    model,
    messages: [...history, message],
    stream: true,
    stream_options: { include_usage: true },
    temperature: Number($("temperature").value),
    max_tokens: Number($("max-tokens").value),
  };
  const seed = $("seed").value.trim();
  if (seed !== "") body.seed = Number(seed);
  return body;
}

function setRunning(controller) {
  running = controller;
  $("send").textContent = controller ? "Stop" : "Send";
  $("send").classList.toggle("stop", Boolean(controller));
}

async function ask(event) {
  event.preventDefault();
  if (running) {
    running.abort();
    return;
  }
  const text = $("question").value.trim();
  if (!text) {
    showError(image ? "Type a question about the image." : "Type a question.");
    return;
  }
  const asked = { text, image };
  const content = image
    ? [{ type: "image_url", image_url: { url: image.url } }, { type: "text", text }]
    : text;
  const message = { role: "user", content };
  const question = addQuestion(text, image?.url);
  const answer = addAnswer();
  $("question").value = "";
  clearAttachment();
  const controller = new AbortController();
  setRunning(controller);
  let written = "";
  try {
    if (!model) await loadModel();
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify(request(message)),
      signal: controller.signal,
    });
    if (!response.ok) throw await failure(response);
    let finishReason = null;
    for await (const chunk of serverEvents(response)) {
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices?.[0];
      if (choice?.delta?.content) {
        written += choice.delta.content;
        answer.text.textContent = written;
        answer.root.scrollIntoView({ block: "end" });
      }
      if (choice?.finish_reason) finishReason = choice.finish_reason;
      if (chunk.usage) showStats(answer, chunk.usage, chunk.timings, finishReason);
    }
    history.push(message, { role: "assistant", content: written });
  } catch (error) {
    if (error.name === "AbortError" && written) {
      // Stopped by the user: what was written stays, and the conversation goes on from it.
      answer.stats.textContent = "stopped";
      history.push(message, { role: "assistant", content: written });
    } else {
      // No answer: take the question back so that it can be fixed and sent again.
      question.remove();
      answer.root.remove();
      if (error.name !== "AbortError") showError(error.message);
      $("question").value = asked.text;
      if (asked.image) showAttachment(asked.image);
    }
  } finally {
    setRunning(null);
    $("question").focus();
  }
}

function newChat() {
  running?.abort();
  history.length = 0;
  for (const node of [...$("log").children]) if (node.id !== "hint") node.remove();
  $("hint").hidden = false;
}

function start() {
  loadSettings();
  watchDropsAndPastes();
  $("composer").addEventListener("submit", ask);
  $("question").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("file").addEventListener("change", () => setImage($("file").files[0]));
  $("remove-image").addEventListener("click", clearAttachment);
  $("new-chat").addEventListener("click", newChat);
  $("api-key").addEventListener("change", () => loadModel().catch(() => {}));
  loadModel().catch((error) => showError(`Could not read the model list: ${error.message}`));
  $("question").focus();
}

start();
