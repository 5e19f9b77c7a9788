// The Images panel: /v1/images/generations with `stream: true`, showing
// the server's progress events (`image_generation.progress`), previews
// (`image_generation.partial_image`) and the picture
// (`image_generation.completed`) as they arrive.

import { api, sseEvents, streamError } from './api.js';
import { $, el, numberField, toast } from './dom.js';
import { fillSelect, onModels, refreshModels } from './models.js';

let running = null;

function setBusy(busy) {
  $('images-go').hidden = busy;
  $('images-go').disabled = busy;
  $('images-stop').hidden = !busy;
}

function pictureUrl(event) {
  const format = event.output_format === 'jpeg' ? 'jpeg' : event.output_format === 'webp' ? 'webp' : 'png';
  return `data:image/${format};base64,${event.b64_json}`;
}

function requestBody(model) {
  const body = {
    model,
    prompt: $('images-prompt').value.trim(),
    n: 1,
    stream: true,
    response_format: 'b64_json',
    partial_images: numberField('images-partials') ?? 0,
  };
  const negative = $('images-negative').value.trim();
  if (negative) body.negative_prompt = negative;
  if ($('images-size').value) body.size = $('images-size').value;
  const steps = numberField('images-steps');
  if (steps !== undefined) body.steps = steps;
  const seed = numberField('images-seed');
  if (seed !== undefined) body.seed = seed;
  return body;
}

async function generate() {
  if (running) return;
  const model = $('images-model').value;
  if (!model) {
    toast('No image model to draw with');
    return;
  }
  const body = requestBody(model);
  const status = $('images-status');
  const progress = $('images-progress');
  const picture = el('img', { alt: body.prompt });
  const caption = el('figcaption', {}, 'waiting for the model…');
  const card = el('figure', { className: 'card', dataset: { state: 'running' } }, picture, caption);
  $('images-out').prepend(card);
  progress.hidden = false;
  progress.value = 0;
  status.textContent = 'starting…';
  running = new AbortController();
  setBusy(true);
  const startedAt = performance.now();
  try {
    const response = await api('/v1/images/generations', { method: 'POST', body, signal: running.signal });
    for await (const { event, data } of sseEvents(response)) {
      const payload = JSON.parse(data);
      if (event === 'error') throw streamError(payload) || new Error('generation failed');
      if (event === 'image_generation.progress') {
        progress.max = payload.steps;
        progress.value = payload.step;
        status.textContent = `step ${payload.step} of ${payload.steps}`;
        caption.textContent = status.textContent;
      } else if (event === 'image_generation.partial_image') {
        picture.src = pictureUrl(payload);
        card.dataset.state = 'preview';
      } else if (event === 'image_generation.completed') {
        picture.src = pictureUrl(payload);
        const seconds = ((performance.now() - startedAt) / 1000).toFixed(1);
        const name = `llmlab-${payload.seed ?? 'image'}.${payload.output_format || 'png'}`;
        caption.replaceChildren(
          `${payload.size} · seed ${payload.seed} · ${seconds} s · `,
          el('a', { href: picture.src, download: name }, 'download'),
        );
        card.dataset.state = 'done';
      }
    }
    status.textContent = card.dataset.state === 'done' ? 'done' : 'the stream ended without a picture';
  } catch (error) {
    card.dataset.state = error.name === 'AbortError' ? 'stopped' : 'error';
    caption.textContent = error.name === 'AbortError' ? 'stopped' : error.message;
    status.textContent = caption.textContent;
  } finally {
    progress.hidden = true;
    running = null;
    setBusy(false);
    refreshModels();
  }
}

export function setupImages() {
  $('images-form').addEventListener('submit', (event) => {
    event.preventDefault();
    generate();
  });
  $('images-stop').addEventListener('click', () => running?.abort());
  onModels(() => {
    const count = fillSelect($('images-model'), 'image');
    $('images-none').hidden = count > 0;
    $('images-form').hidden = count === 0;
  });
}
