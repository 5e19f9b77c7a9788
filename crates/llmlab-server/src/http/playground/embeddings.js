// The Embeddings panel: the texts' pairwise cosine similarity from their
// /v1/embeddings vectors, and with a query, the texts ranked by
// /v1/similarity (the server's own ranking).

import { apiJson } from './api.js';
import { $, el, toast } from './dom.js';
import { fillSelect, onModels, refreshModels } from './models.js';

// A table wider than this is no longer readable, least of all on a phone.
const MAX_TEXTS = 16;

function cosine(a, b) {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i += 1) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return na && nb ? dot / Math.sqrt(na * nb) : 0;
}

/** A score cell, shaded by its value through a CSS variable (set through the CSSOM, which the CSP allows). */
function scoreCell(score) {
  const cell = el('td', { className: 'n score', dataset: { score: score.toFixed(4) } }, score.toFixed(3));
  cell.style.setProperty('--score', String(Math.max(0, Math.min(1, score))));
  return cell;
}

function label(index, text) {
  return el('th', { scope: 'row', title: text }, el('span', { className: 'idx' }, `#${index + 1}`), ' ', text);
}

function renderMatrix(texts, vectors) {
  const head = el('tr', {}, el('th', {}, ''), ...texts.map((t, i) => el('th', { scope: 'col', title: t }, `#${i + 1}`)));
  const rows = texts.map((text, i) => el('tr', {}, label(i, text), ...texts.map((_, j) => scoreCell(cosine(vectors[i], vectors[j])))));
  const table = $('embed-matrix');
  table.replaceChildren(el('caption', {}, 'Cosine similarity'), el('thead', {}, head), el('tbody', {}, ...rows));
  table.hidden = false;
}

function renderRanking(query, results) {
  const head = el('tr', {}, ...['Rank', 'Score', 'Text'].map((h) => el('th', {}, h)));
  const rows = results.map((r, rank) =>
    el('tr', {}, el('td', { className: 'n' }, String(rank + 1)), scoreCell(r.score), label(r.index, r.document)),
  );
  const table = $('embed-rank');
  table.replaceChildren(el('caption', {}, `Ranked for “${query}”`), el('thead', {}, head), el('tbody', {}, ...rows));
  table.hidden = false;
}

async function compare() {
  const model = $('embed-model').value;
  const texts = $('embed-texts')
    .value.split('\n')
    .map((t) => t.trim())
    .filter(Boolean);
  const query = $('embed-query').value.trim();
  if (!model) {
    toast('No embedding model in the registry');
    return;
  }
  if (!texts.length) {
    toast('Write at least one text');
    return;
  }
  if (texts.length > MAX_TEXTS) {
    toast(`At most ${MAX_TEXTS} texts`);
    return;
  }
  const status = $('embed-status');
  const button = $('embed-go');
  button.disabled = true;
  status.textContent = 'embedding…';
  $('embed-rank').hidden = true;
  try {
    const started = performance.now();
    const answer = await apiJson('/v1/embeddings', { method: 'POST', body: { model, input: texts } });
    const vectors = [];
    for (const item of answer.data) vectors[item.index] = item.embedding;
    renderMatrix(texts, vectors);
    if (query) {
      const ranked = await apiJson('/v1/similarity', { method: 'POST', body: { model, query, documents: texts } });
      renderRanking(query, ranked.data);
    }
    const ms = Math.round(performance.now() - started);
    status.textContent = `${texts.length} texts · ${vectors[0]?.length ?? 0} dimensions · ${answer.usage?.prompt_tokens ?? '?'} tokens · ${ms} ms`;
  } catch (error) {
    status.textContent = error.message;
  } finally {
    button.disabled = false;
    refreshModels();
  }
}

export function setupEmbeddings() {
  $('embed-form').addEventListener('submit', (event) => {
    event.preventDefault();
    compare();
  });
  onModels(() => fillSelect($('embed-model'), 'embedding'));
}
