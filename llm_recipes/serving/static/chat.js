// The chat page: streams answers from /v1/chat/completions, keeps the conversation in sessionStorage,
// and sends thumbs up/down and suggested better answers to /v1/feedback. Plain JS, no build step.
//
// Small models have small context windows (the quickstart's is 128 tokens), so the page sizes itself from
// the served model: the default answer length is a quarter of the context, and before each turn the
// conversation is measured with /tokenize and its oldest turns are left out (the system prompt, if any,
// stays) until prompt + answer fit. A note in the page says what was left out.
"use strict";

const state = { model: null, messages: JSON.parse(sessionStorage.getItem("conversation") || "[]"), busy: false };
const limits = { context: 0, maxTokens: 1 };  // from /health: the context window; the answer's ceiling
const MIN_ANSWER = 8;  // fewer tokens than this left for an answer: shorten the conversation further
const $ = (id) => document.getElementById(id);

function save() { sessionStorage.setItem("conversation", JSON.stringify(state.messages)); }

// the system prompt (optional, from the settings row) goes first in every request and is never left out
function withSystem(messages) {
  const system = $("system-prompt").value.trim();
  return system ? [{ role: "system", content: system }, ...messages] : messages;
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value || localStorage.getItem("apiKey");
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function errorText(response) {
  try { return (await response.json()).error.message; } catch (e) { return response.status + " " + response.statusText; }
}

function render(message, index) {
  const box = document.createElement("div");
  box.className = "msg " + message.role;
  box.dataset.index = index;
  box.innerHTML = '<div class="role"></div><div class="text"></div>';
  box.querySelector(".role").textContent = message.role === "user" ? "you" : state.model || "assistant";
  box.querySelector(".text").textContent = message.content;
  $("conversation").appendChild(box);
  if (message.role === "assistant") addFeedbackControls(box, index);
  box.scrollIntoView({ block: "end" });
  return box;
}

function addFeedbackControls(box, index) {
  const actions = document.createElement("div");
  actions.className = "actions";
  actions.innerHTML =
    '<button type="button" class="up" title="thumbs up: a good answer" aria-label="thumbs up">▲ good</button>' +
    '<button type="button" class="down" title="thumbs down: a bad answer" aria-label="thumbs down">▼ bad</button>' +
    '<button type="button" class="suggest-toggle">Suggest a better answer</button>' +
    '<span class="status" role="status"></span>' +
    '<div class="suggest"><textarea placeholder="What should the answer have been?"></textarea>' +
    '<button type="button" class="suggest-send">Save suggestion</button></div>';
  box.appendChild(actions);
  const status = actions.querySelector(".status");
  const rate = (rating, button) => async () => {
    actions.querySelectorAll(".up,.down").forEach((b) => b.classList.remove("chosen"));
    button.classList.add("chosen");
    await sendFeedback(index, { rating }, status);
  };
  actions.querySelector(".up").onclick = rate("up", actions.querySelector(".up"));
  actions.querySelector(".down").onclick = rate("down", actions.querySelector(".down"));
  actions.querySelector(".suggest-toggle").onclick = () => actions.querySelector(".suggest").classList.toggle("open");
  actions.querySelector(".suggest-send").onclick = async () => {
    const text = actions.querySelector(".suggest textarea").value.trim();
    if (!text) { status.textContent = "write a better answer first"; return; }
    const rating = actions.querySelector(".down.chosen") ? "down" : null;
    await sendFeedback(index, { suggestion: text, rating }, status);
  };
}

async function sendFeedback(index, fields, status) {
  status.textContent = "saving…";
  const body = { messages: withSystem(state.messages.slice(0, index)), completion: state.messages[index].content,
                 model: state.model, ...fields };
  const response = await fetch("/v1/feedback", { method: "POST", headers: headers(), body: JSON.stringify(body) });
  status.textContent = response.ok ? "thanks, saved" : "not saved: " + (await errorText(response));
  status.classList.toggle("error", !response.ok);
}

async function countTokens(messages) {
  const response = await fetch("/tokenize", { method: "POST", headers: headers(),
                                              body: JSON.stringify({ messages, add_generation_prompt: true }) });
  if (!response.ok) throw new Error(await errorText(response));
  return (await response.json()).count;
}

// The messages to send: the system prompt (if any) and the newest turns whose prompt leaves room for
// the answer; the answer is shortened only when the newest message alone leaves less room than asked.
async function fitToContext(messages, maxTokens) {
  const system = messages.length && messages[0].role === "system" ? [messages[0]] : [];
  let turns = messages.slice(system.length);
  for (;;) {
    const room = limits.context - (await countTokens(system.concat(turns)));
    if (room >= maxTokens || (turns.length === 1 && room >= Math.min(MIN_ANSWER, maxTokens))) {
      return { messages: system.concat(turns), left: messages.length - system.length - turns.length,
               maxTokens: Math.min(maxTokens, room) };
    }
    if (turns.length === 1) {
      throw new Error(`this message is too long for the model's context of ${limits.context} tokens ` +
                      "(with room for an answer): please shorten it");
    }
    // leave out the oldest turn: a question with its answer
    turns = turns.slice(turns.length > 2 && turns[1].role === "assistant" ? 2 : 1);
  }
}

function showTrimNote(left, maxTokens, asked) {
  const note = $("trim-note");
  const parts = [];
  if (left) parts.push(`the ${left} oldest message${left > 1 ? "s were" : " was"} left out`);
  if (maxTokens < asked) parts.push(`the answer is limited to ${maxTokens} tokens`);
  note.hidden = !parts.length;
  note.textContent = parts.length ? `This model's context is ${limits.context} tokens: ${parts.join(" and ")} ` +
                                    "to fit it." : "";
  document.querySelectorAll("#conversation .msg").forEach((box) => {
    const index = Number(box.dataset.index);
    box.classList.toggle("trimmed", index < left);
  });
}

async function send(text) {
  state.busy = true;
  $("send").disabled = true;
  state.messages.push({ role: "user", content: text });
  render(state.messages.at(-1), state.messages.length - 1);
  const reply = { role: "assistant", content: "" };
  const box = document.createElement("div");
  box.className = "msg assistant streaming";
  box.innerHTML = '<div class="role"></div><div class="text"></div>';
  box.querySelector(".role").textContent = state.model || "assistant";
  $("conversation").appendChild(box);
  const out = box.querySelector(".text");
  try {
    const asked = Math.max(1, Math.min(Number($("max-tokens").value) || limits.maxTokens, limits.maxTokens));
    const fitted = await fitToContext(withSystem(state.messages), asked);
    showTrimNote(fitted.left, fitted.maxTokens, asked);
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(),
      body: JSON.stringify({ model: state.model, messages: fitted.messages, stream: true,
                             temperature: Number($("temperature").value), max_tokens: fitted.maxTokens }),
    });
    if (!response.ok) throw new Error(await errorText(response));
    // server-sent events: lines "data: {json}" separated by blank lines, ending with "data: [DONE]"
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut).trim();
        buffer = buffer.slice(cut + 2);
        if (!event.startsWith("data: ") || event === "data: [DONE]") continue;
        const data = JSON.parse(event.slice(6));
        if (data.error) throw new Error(data.error.message);
        const delta = data.choices.length ? data.choices[0].delta.content : null;
        if (delta) { reply.content += delta; out.textContent = reply.content; box.scrollIntoView({ block: "end" }); }
      }
    }
    state.messages.push(reply);
    save();
    box.dataset.index = state.messages.length - 1;
    addFeedbackControls(box, state.messages.length - 1);
  } catch (e) {
    state.messages.pop();  // the question stays on screen, but is not part of the conversation sent next time
    out.textContent = reply.content;
    const err = document.createElement("div");
    err.className = "error";
    err.textContent = "error: " + e.message;
    box.appendChild(err);
  } finally {
    box.classList.remove("streaming");
    state.busy = false;
    $("send").disabled = false;
  }
}

async function init() {
  const health = await (await fetch("/health")).json();
  state.model = health.model;
  $("model-name").textContent = `${health.model} · context ${health.context_window} tokens`;
  $("key-box").hidden = !health.auth_required;
  $("api-key").value = localStorage.getItem("apiKey") || "";
  $("api-key").onchange = () => localStorage.setItem("apiKey", $("api-key").value);
  // answers of up to a quarter of the context by default; at most what fits after the shortest prompt
  limits.context = health.context_window;
  limits.maxTokens = Math.max(1, Math.min(health.max_tokens_cap, health.context_window - 1));
  try {
    const shortest = await countTokens([{ role: "user", content: "" }]);
    limits.maxTokens = Math.max(1, Math.min(health.max_tokens_cap, health.context_window - shortest));
  } catch (e) { /* no chat template or no key yet: the server's checks still apply */ }
  $("max-tokens").max = limits.maxTokens;
  $("max-tokens").value = Math.max(1, Math.min(limits.maxTokens, health.default_max_tokens,
                                               Math.floor(health.context_window / 4)));
  $("system-prompt").value = sessionStorage.getItem("systemPrompt") || "";
  $("system-prompt").onchange = () => sessionStorage.setItem("systemPrompt", $("system-prompt").value);
  state.messages.forEach(render);
}

$("composer").onsubmit = (event) => {
  event.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || state.busy) return;
  $("prompt").value = "";
  send(text);
};
$("prompt").onkeydown = (event) => {
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("composer").requestSubmit(); }
};
$("new-chat").onclick = () => {
  state.messages = []; save(); $("conversation").innerHTML = ""; $("trim-note").hidden = true;
};
init();
