// The registry's models (GET /v1/models): the pickers of the other panels
// and the Models panel with load and unload buttons.

import { api, apiJson } from './api.js';
import { $, el, formatBytes, formatSeconds, toast } from './dom.js';

let list = [];
const listeners = [];

export function allModels() {
  return list;
}

export function modelById(id) {
  return list.find((m) => m.id === id);
}

/** Calls `listener(models)` after every refresh. */
export function onModels(listener) {
  listeners.push(listener);
}

export async function refreshModels() {
  try {
    const answer = await apiJson('/v1/models');
    list = Array.isArray(answer.data) ? answer.data : [];
    $('models-status').textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    $('models-status').textContent = `could not list models: ${error.message}`;
    return;
  }
  for (const listener of listeners) listener(list);
  renderTable();
}

/**
 * Fills a <select> with the models of one kind and keeps the user's choice
 * across refreshes. A fresh select picks a loaded model first: it answers
 * without a load.
 */
export function fillSelect(select, kind) {
  const previous = select.value;
  const models = list.filter((m) => m.kind === kind);
  select.replaceChildren(
    ...models.map((m) => el('option', { value: m.id }, m.state === 'loaded' ? `${m.id} (loaded)` : m.id)),
  );
  const keep = models.find((m) => m.id === previous);
  const loaded = models.find((m) => m.state === 'loaded');
  const choice = keep || loaded || models[0];
  if (choice) select.value = choice.id;
  return models.length;
}

function stateText(model) {
  let text = model.state;
  if (model.state === 'failed' && model.error) text += `: ${model.error}`;
  if (model.degraded) text += ` (degraded: ${model.degraded})`;
  if (model.circuit && model.circuit !== 'closed') text += ` · breaker ${model.circuit}`;
  return text;
}

function keepAliveText(model) {
  if (model.pinned) return 'pinned';
  if (model.expires_in_secs !== undefined && model.expires_in_secs !== null) {
    return `unloads in ${formatSeconds(model.expires_in_secs)}`;
  }
  return model.state === 'loaded' && model.active_requests > 0 ? 'in use' : '';
}

async function act(id, action, button) {
  button.disabled = true;
  $('models-status').textContent = `${action === 'load' ? 'loading' : 'unloading'} ${id}…`;
  try {
    await api(`/v1/models/${encodeURIComponent(id)}/${action}`, { method: 'POST' });
  } catch (error) {
    toast(`${action} ${id}: ${error.message}`);
  }
  await refreshModels();
}

function renderTable() {
  const head = el('tr', {}, ...['Model', 'Kind', 'Inputs', 'State', 'Memory', 'Keep-alive', 'Requests', ''].map((h) => el('th', {}, h)));
  const rows = list.map((m) => {
    const loaded = m.state === 'loaded' || m.state === 'loading';
    const button = el('button', { type: 'button', className: loaded ? 'quiet' : '' }, loaded ? 'Unload' : 'Load');
    button.dataset.model = m.id;
    button.dataset.action = loaded ? 'unload' : 'load';
    button.addEventListener('click', () => act(m.id, button.dataset.action, button));
    const memory = [formatBytes(m.memory_bytes), m.gpu_memory_bytes ? `GPU ${formatBytes(m.gpu_memory_bytes)}` : '']
      .filter(Boolean)
      .join(' · ');
    // data-label names each cell where a phone shows rows as cards.
    const cell = (label, className, ...content) => el('td', { className, dataset: { label } }, ...content);
    return el(
      'tr',
      { dataset: { model: m.id, state: m.state } },
      cell('Model', 'id', m.id),
      cell('Kind', '', m.kind),
      cell('Inputs', '', (m.input_modalities || []).join(', ')),
      cell('State', `state ${m.state}`, stateText(m)),
      cell('Memory', 'n', memory),
      cell('Keep-alive', '', keepAliveText(m)),
      cell('Requests', 'n', String(m.active_requests ?? '')),
      cell('', 'act', button),
    );
  });
  $('models-table').replaceChildren(el('thead', {}, head), el('tbody', {}, ...rows));
}

/** Wires the panel; while it is on screen the list refreshes itself (keep-alive counts down). */
export function setupModelsPanel(isVisible) {
  $('models-refresh').addEventListener('click', refreshModels);
  setInterval(() => {
    if (isVisible() && document.visibilityState === 'visible') refreshModels();
  }, 5000);
}
