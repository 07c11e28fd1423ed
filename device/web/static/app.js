// edge-recorder's page: the only script, served by the speaker. The page works without it; it only
// asks before a delete, and keeps one recording playing at a time.
"use strict";
document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-confirm], button.delete");
  const question = button && (button.dataset.confirm || "Delete this recording?");
  if (button && !window.confirm(question)) event.preventDefault();
});
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (event.submitter && event.submitter.matches("button[data-confirm], button.delete")) return;
  if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) event.preventDefault();
});
document.addEventListener("play", (event) => {
  for (const audio of document.querySelectorAll("audio")) {
    if (audio !== event.target) audio.pause();
  }
}, true);
