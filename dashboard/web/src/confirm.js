// Two clicks instead of a modal dialog for what cannot be undone: the first click arms the
// button (its label says so) for a few seconds, the second does it. One stray click deletes
// nothing, and the page stays scriptable and keyboard-reachable.

const ARMED_MS = 4000;

/** True on the second click within a few seconds; arms the button on the first. */
export function confirmed(button) {
  if (button.dataset.armed === 'yes') return true;
  const label = button.textContent;
  button.dataset.armed = 'yes';
  button.textContent = `Click again to ${label.toLowerCase()}`;
  setTimeout(() => {
    button.dataset.armed = '';
    button.textContent = label;
  }, ARMED_MS);
  return false;
}
