// The server's HTTP API as the panels use it: the API key, JSON requests,
// errors in OpenAI's envelope, and server-sent events read from a fetch
// body (EventSource cannot send a POST body nor an Authorization header).

const KEY_STORAGE = 'llmlab.apiKey';

export function getKey() {
  try {
    return localStorage.getItem(KEY_STORAGE) || '';
  } catch {
    return ''; // storage can be disabled (private windows, policies)
  }
}

export function setKey(key) {
  try {
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
  } catch {
    /* without storage the key lasts as long as the page: see memoryKey */
  }
  memoryKey = key;
}

// Used when localStorage refuses to keep the key.
let memoryKey = '';

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** The message of an error answer: OpenAI's envelope when it is one, else the status. */
async function errorOf(response) {
  let text = '';
  try {
    text = await response.text();
    const body = JSON.parse(text);
    if (body && body.error && body.error.message) {
      return new ApiError(response.status, body.error.message, body.error.code);
    }
  } catch {
    /* not JSON: fall through to the plain text */
  }
  return new ApiError(response.status, text.slice(0, 300) || `HTTP ${response.status}`);
}

// Asked for a key on a 401 (set by the page); resolves true when the user gave one.
let keyPrompt = null;
// One prompt at a time: requests refused together wait for the same answer.
let pendingPrompt = null;

export function onKeyNeeded(prompt) {
  keyPrompt = prompt;
}

function askForKey(message) {
  if (!keyPrompt) return Promise.resolve(false);
  if (!pendingPrompt) {
    pendingPrompt = keyPrompt(message).finally(() => { pendingPrompt = null; });
  }
  return pendingPrompt;
}

/**
 * fetch() with the key and a JSON body. Resolves to the Response when it
 * is 2xx; otherwise throws an ApiError carrying the server's message. A 401
 * asks the user for the key and sends the request again.
 */
export async function api(path, { method = 'GET', body, signal } = {}) {
  for (;;) {
    const headers = {};
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const key = getKey() || memoryKey;
    if (key) headers.Authorization = `Bearer ${key}`;
    const response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: 'no-store',
    });
    if (response.ok) return response;
    const error = await errorOf(response);
    if (response.status === 401 && !signal?.aborted && (await askForKey(error.message))) continue;
    throw error;
  }
}

export async function apiJson(path, options) {
  return (await api(path, options)).json();
}

/**
 * The events of a text/event-stream body as {event, data}, in order.
 * Comment lines (the server's keep-alives) are skipped. Leaving the loop
 * early cancels the body, which closes the request.
 */
export async function* sseEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let event = '';
  let data = [];
  let finished = false;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) {
        finished = true;
        return;
      }
      buffer += value;
      let end;
      while ((end = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, end).replace(/\r$/, '');
        buffer = buffer.slice(end + 1);
        if (line === '') {
          if (data.length) yield { event: event || 'message', data: data.join('\n') };
          event = '';
          data = [];
          continue;
        }
        if (line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        const valueText = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
        if (field === 'event') event = valueText;
        else if (field === 'data') data.push(valueText);
      }
    }
  } finally {
    if (!finished) reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}

/** An error envelope sent inside a stream ({"error": {...}}) as an ApiError, else null. */
export function streamError(payload) {
  if (payload && payload.error) {
    return new ApiError(payload.error.status || 500, payload.error.message || 'stream failed', payload.error.code);
  }
  return null;
}
