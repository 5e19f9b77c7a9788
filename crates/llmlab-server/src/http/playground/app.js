// The playground's entry point: tabs, the API key dialog, and start-up.
// Each panel lives in its own module; this one only wires them together.

import { getKey, onKeyNeeded, setKey } from './api.js';
import { setupChat } from './chat.js';
import { $ } from './dom.js';
import { setupEmbeddings } from './embeddings.js';
import { setupImages } from './images.js';
import { refreshModels, setupModelsPanel } from './models.js';

const TABS = ['chat', 'images', 'embeddings', 'models'];

function currentTab() {
  const tab = location.hash.slice(1);
  return TABS.includes(tab) ? tab : 'chat';
}

function showTab(tab) {
  for (const name of TABS) {
    $(name).hidden = name !== tab;
    document.querySelector(`[data-tab="${name}"]`).setAttribute('aria-selected', String(name === tab));
  }
  if (tab === 'models') refreshModels();
}

function updateKeyButton() {
  $('key-button').textContent = getKey() ? 'Key ✓' : 'Key';
}

/**
 * Shows the key dialog; resolves true when a key was saved (the refused
 * request is then sent again), false when the user cancelled or forgot it.
 */
function askForKey(reason) {
  const dialog = $('key-dialog');
  if (dialog.open) return Promise.resolve(false);
  $('key-reason').textContent = reason
    ? `This server needs an API key (${reason}).`
    : 'Sent as "Authorization: Bearer <key>" and kept in this browser.';
  $('key-input').value = getKey();
  dialog.returnValue = '';
  return new Promise((resolve) => {
    dialog.addEventListener(
      'close',
      () => {
        const key = $('key-input').value.trim();
        if (dialog.returnValue === 'save' && key) {
          setKey(key);
          resolve(true);
        } else {
          if (dialog.returnValue === 'clear') setKey('');
          resolve(false);
        }
        updateKeyButton();
      },
      { once: true },
    );
    dialog.showModal();
    $('key-input').focus();
  });
}

function start() {
  onKeyNeeded(askForKey);
  for (const button of document.querySelectorAll('[data-tab]')) {
    button.addEventListener('click', () => {
      // The hash keeps the tab across reloads and makes it linkable.
      location.hash = button.dataset.tab;
    });
  }
  window.addEventListener('hashchange', () => showTab(currentTab()));
  $('key-button').addEventListener('click', async () => {
    if (await askForKey('')) refreshModels();
  });
  setupChat();
  setupImages();
  setupEmbeddings();
  setupModelsPanel(() => !$('models').hidden);
  updateKeyButton();
  showTab(currentTab());
  refreshModels();
}

start();
