// Keyboard shortcuts for the rating form: each radio button names its key in data-key; Enter saves.
(function () {
  "use strict";
  var form = document.getElementById("vote");
  if (!form) { return; }
  var keys = {};
  form.querySelectorAll("input[data-key]").forEach(function (input) { keys[input.dataset.key] = input; });
  document.addEventListener("keydown", function (ev) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey || ev.repeat) { return; }
    var input = keys[ev.key.toLowerCase()];
    if (input) {
      input.checked = true;
      ev.preventDefault();
    } else if (ev.key === "Enter") {
      ev.preventDefault();
      form.requestSubmit();  // validates first: both questions must be answered
    }
  });
})();
