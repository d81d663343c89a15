// Brief notices over the map: errors of API calls and events worth a glance.

const shown = new Map();

export function notify(text, kind = 'error', ms = 6000) {
  const box = document.getElementById('notices');
  // The same message again refreshes the one on screen instead of stacking up.
  const old = shown.get(text);
  if (old) old.remove();
  const note = document.createElement('div');
  note.className = `notice ${kind}`;
  note.setAttribute('role', kind === 'error' ? 'alert' : 'status');
  note.textContent = text;
  box.appendChild(note);
  shown.set(text, note);
  setTimeout(() => {
    note.remove();
    if (shown.get(text) === note) shown.delete(text);
  }, ms);
}
