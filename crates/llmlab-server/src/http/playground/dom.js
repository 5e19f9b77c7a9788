// Small DOM helpers. Every string given to `el` becomes a text node, never
// markup: model output and server messages are untrusted text, and this is
// the one way the playground puts text on the page.

export const $ = (id) => document.getElementById(id);

/** `el('td', {className: 'n'}, 'text', otherNode)`; props are set as properties. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === 'dataset') Object.assign(node.dataset, value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function formatBytes(bytes) {
  if (bytes === null || bytes === undefined) return '';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

export function formatSeconds(secs) {
  if (secs === null || secs === undefined) return '';
  if (secs < 90) return `${secs} s`;
  if (secs < 5400) return `${Math.round(secs / 60)} min`;
  return `${(secs / 3600).toFixed(1)} h`;
}

let toastTimer = 0;

/** A short message at the bottom of the screen (errors that belong to no panel). */
export function toast(message) {
  const node = $('toast');
  node.textContent = message;
  node.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { node.hidden = true; }, 6000);
}

/** The value of a number input, or undefined when it is empty (the server's default then applies). */
export function numberField(id) {
  const text = $(id).value.trim();
  if (text === '') return undefined;
  const value = Number(text);
  return Number.isFinite(value) ? value : undefined;
}

/** Keeps a scrolled box pinned to its end while text arrives, unless the reader scrolled up. */
export function stickToBottom(box, update) {
  const atEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  update();
  if (atEnd) box.scrollTop = box.scrollHeight;
}
