// The Chat panel: a conversation streamed from /v1/chat/completions (SSE
// read from fetch), reasoning folded in a <details>, tool calls shown, a
// stop button, an image part for vision models. Model output is only ever
// put on the page as text nodes.

import { api, sseEvents, streamError } from './api.js';
import { $, el, numberField, stickToBottom, toast } from './dom.js';
import { fillSelect, modelById, onModels, refreshModels } from './models.js';

// Pictures are scaled down before upload: the model's projector works at a
// few hundred pixels anyway, and the request must stay under the server's
// body limit.
const MAX_IMAGE_SIDE = 1024;

/** The conversation as sent to the server (the system prompt is added per request). */
let history = [];
let running = null; // the AbortController of the answer being streamed
let attachment = null; // data URL of the picture for the next message

function setBusy(busy) {
  $('chat-send').hidden = busy;
  $('chat-send').disabled = busy;
  $('chat-stop').hidden = !busy;
  $('chat-model').disabled = busy;
  $('chat-new').disabled = busy;
}

function log() {
  return $('chat-log');
}

function append(node) {
  stickToBottom(log(), () => log().append(node));
  log().scrollTop = log().scrollHeight;
}

function userView(text, image) {
  return el(
    'article',
    { className: 'msg user' },
    image ? el('img', { src: image, alt: 'attached image', className: 'thumb' }) : null,
    el('div', { className: 'content' }, text),
  );
}

/** The on-screen answer; its methods add streamed pieces as text. */
function assistantView(model) {
  const reasoningText = document.createTextNode('');
  const reasoningLabel = el('summary', {}, 'Reasoning');
  const reasoning = el('details', { className: 'reasoning', hidden: true }, reasoningLabel, el('div', { className: 'text' }, reasoningText));
  const contentText = document.createTextNode('');
  const content = el('div', { className: 'content' }, contentText);
  const tools = el('div', { className: 'tools', hidden: true });
  const meta = el('div', { className: 'meta' }, model);
  const article = el('article', { className: 'msg assistant', dataset: { state: 'waiting' } }, reasoning, content, tools, meta);
  const calls = []; // by index: {id, name, arguments}

  const grow = (fn) => stickToBottom(log(), fn);
  return {
    article,
    get content() {
      return contentText.data;
    },
    get toolCalls() {
      return calls.filter(Boolean);
    },
    state(state) {
      article.dataset.state = state;
    },
    addReasoning(text) {
      grow(() => {
        reasoning.hidden = false;
        reasoningText.appendData(text);
      });
    },
    addContent(text) {
      grow(() => contentText.appendData(text));
    },
    addToolCalls(deltas) {
      for (const delta of deltas) {
        const call = (calls[delta.index ?? 0] ||= { id: '', name: '', arguments: '' });
        if (delta.id) call.id = delta.id;
        if (delta.function?.name) call.name += delta.function.name;
        if (delta.function?.arguments) call.arguments += delta.function.arguments;
      }
      grow(() => {
        tools.hidden = false;
        tools.replaceChildren(
          ...calls.filter(Boolean).map((c) =>
            el('div', { className: 'tool-call' }, el('span', { className: 'label' }, 'tool call'), el('code', {}, `${c.name}(${c.arguments})`)),
          ),
        );
      });
    },
    finishReasoning() {
      if (!reasoning.hidden) reasoningLabel.textContent = `Reasoning (${reasoningText.data.length} characters)`;
    },
    note(text, kind = '') {
      grow(() => meta.append(el('span', { className: `tag ${kind}` }, text)));
    },
  };
}

function sampling() {
  const settings = {
    temperature: numberField('chat-temperature'),
    top_p: numberField('chat-top-p'),
    max_tokens: numberField('chat-max-tokens'),
    seed: numberField('chat-seed'),
  };
  return Object.fromEntries(Object.entries(settings).filter(([, v]) => v !== undefined));
}

/** The tools field as a list, or throws with a message for the user. */
function tools() {
  const text = $('chat-tools').value.trim();
  if (!text) return undefined;
  let parsed;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new Error(`Tools are not JSON: ${error.message}`);
  }
  if (!Array.isArray(parsed)) throw new Error('Tools must be a JSON array');
  return parsed.length ? parsed : undefined;
}

/** Plain completion: the message alone is the prompt, with no template and no history. */
function rawBody(model, prompt) {
  return { model, prompt, stream: true, stream_options: { include_usage: true }, ...sampling() };
}

function requestBody(model) {
  const system = $('chat-system').value.trim();
  const messages = system ? [{ role: 'system', content: system }, ...history] : [...history];
  const body = { model, messages, stream: true, stream_options: { include_usage: true }, ...sampling() };
  const toolList = tools();
  if (toolList) body.tools = toolList;
  return body;
}

function summary(usage, firstTokenAt, startedAt, finish) {
  const parts = [];
  if (usage) {
    parts.push(`${usage.completion_tokens} tokens`);
    const seconds = (performance.now() - (firstTokenAt ?? startedAt)) / 1000;
    if (firstTokenAt && usage.completion_tokens > 1 && seconds > 0) {
      parts.push(`${(usage.completion_tokens / seconds).toFixed(1)} tok/s`);
    }
    const cached = usage.prompt_tokens_details?.cached_tokens;
    parts.push(`prompt ${usage.prompt_tokens}${cached ? ` (${cached} cached)` : ''}`);
  }
  if (firstTokenAt) parts.push(`first token ${Math.round(firstTokenAt - startedAt)} ms`);
  if (finish) parts.push(finish);
  return parts.join(' · ');
}

async function send() {
  if (running) return;
  const model = $('chat-model').value;
  const text = $('chat-input').value.trim();
  if (!model) {
    toast('No chat model to talk to');
    return;
  }
  if (!text && !attachment) return;
  const content = attachment
    ? [{ type: 'text', text }, { type: 'image_url', image_url: { url: attachment } }]
    : text;
  const raw = $('chat-raw').checked;
  const userMessage = { role: 'user', content };
  history.push(userMessage);
  let body;
  try {
    body = raw ? rawBody(model, text) : requestBody(model);
  } catch (error) {
    history.pop();
    toast(error.message);
    return;
  }
  const shown = userView(text, attachment);
  append(shown);
  $('chat-input').value = '';
  clearAttachment();

  const view = assistantView(model);
  append(view.article);
  running = new AbortController();
  setBusy(true);
  const startedAt = performance.now();
  let firstTokenAt = null;
  let usage = null;
  let finish = null;
  try {
    const path = raw ? '/v1/completions' : '/v1/chat/completions';
    const response = await api(path, { method: 'POST', body, signal: running.signal });
    view.state('streaming');
    for await (const { data } of sseEvents(response)) {
      if (data === '[DONE]') break;
      const chunk = JSON.parse(data);
      const error = streamError(chunk);
      if (error) throw error;
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices?.[0];
      if (!choice) continue;
      // A completion chunk carries `text` where a chat chunk has a delta.
      const delta = choice.delta || { content: choice.text };
      if (delta.reasoning_content || delta.content || delta.tool_calls) firstTokenAt ??= performance.now();
      if (delta.reasoning_content) view.addReasoning(delta.reasoning_content);
      if (delta.content) view.addContent(delta.content);
      if (delta.tool_calls) view.addToolCalls(delta.tool_calls);
      if (choice.finish_reason) finish = choice.finish_reason;
      if (choice.guard) view.note(`stopped by ${choice.guard.kind} guard`, 'warn');
    }
    view.state('done');
  } catch (error) {
    if (error.name === 'AbortError') {
      view.state('stopped');
      view.note('stopped', 'warn');
    } else {
      view.state('error');
      view.note(error.message, 'error');
    }
  } finally {
    view.finishReasoning();
    const stats = summary(usage, firstTokenAt, startedAt, finish);
    if (stats) view.note(stats);
    // The playground runs no tools, so a call stays on screen only: the
    // next turn carries the answer's text, which every template accepts.
    if (raw) {
      // A raw prompt is no turn of the conversation.
      history.splice(history.indexOf(userMessage), 1);
    } else if (view.content || view.toolCalls.length) {
      history.push({ role: 'assistant', content: view.content });
    } else {
      // Nothing came back: the question leaves the conversation so that
      // the next one does not follow a user turn (some templates refuse).
      history.splice(history.indexOf(userMessage), 1);
      shown.classList.add('dropped');
    }
    running = null;
    setBusy(false);
    $('chat-input').focus();
    refreshModels();
  }
}

function stop() {
  // Aborting the fetch closes the connection; the server cancels the
  // generation when its client goes.
  if (running) running.abort();
}

function newChat() {
  if (running) return;
  history = [];
  log().replaceChildren();
  clearAttachment();
}

function clearAttachment() {
  attachment = null;
  $('chat-attachment').hidden = true;
  $('chat-attachment-img').removeAttribute('src');
  $('chat-file').value = '';
}

/** A picture file as a data URL, scaled to MAX_IMAGE_SIDE (PNG stays PNG, the rest JPEG). */
async function readImage(file) {
  const bitmap = await createImageBitmap(file);
  const scale = Math.min(1, MAX_IMAGE_SIDE / Math.max(bitmap.width, bitmap.height));
  const canvas = document.createElement('canvas');
  canvas.width = Math.max(1, Math.round(bitmap.width * scale));
  canvas.height = Math.max(1, Math.round(bitmap.height * scale));
  canvas.getContext('2d').drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
  return file.type === 'image/png' ? canvas.toDataURL('image/png') : canvas.toDataURL('image/jpeg', 0.9);
}

async function attach() {
  const file = $('chat-file').files[0];
  if (!file) return;
  try {
    attachment = await readImage(file);
    $('chat-attachment-img').src = attachment;
    $('chat-attachment').hidden = false;
  } catch {
    toast('That file does not read as an image');
    clearAttachment();
  }
}

/** The image button only for models that read images. */
function updateAttach() {
  const model = modelById($('chat-model').value);
  const vision = Boolean(model?.input_modalities?.includes('image'));
  $('chat-attach').hidden = !vision;
  if (!vision) clearAttachment();
}

export function setupChat() {
  $('chat-form').addEventListener('submit', (event) => {
    event.preventDefault();
    send();
  });
  $('chat-input').addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $('chat-form').requestSubmit();
    }
  });
  $('chat-stop').addEventListener('click', stop);
  document.addEventListener('keydown', (event) => {
    if (event.key === 'Escape' && running && !$('key-dialog').open) stop();
  });
  $('chat-new').addEventListener('click', newChat);
  $('chat-file').addEventListener('change', attach);
  $('chat-attachment-remove').addEventListener('click', clearAttachment);
  $('chat-model').addEventListener('change', updateAttach);
  onModels(() => {
    fillSelect($('chat-model'), 'chat');
    updateAttach();
  });
}
