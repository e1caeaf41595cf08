/* Runs first: records every script error, failed resource and console.error of the page in
   #js-errors (data-count), shown as a red banner, so a broken page says so on its face and a
   headless browser's --dump-dom can tell (tests/test_report.py). */
(function () {
  var seen = [];
  function show() {
    var box = document.getElementById("js-errors");
    if (!box || !seen.length) return;
    box.textContent = "This page had script errors: " + seen.join(" | ");
    box.setAttribute("data-count", String(seen.length));
    box.hidden = false;
  }
  function record(msg) {
    seen.push(String(msg));
    show();
  }
  window.addEventListener("error", function (e) {
    var t = e.target;
    if (t && t !== window && (t.src || t.href)) record("failed to load " + (t.src || t.href));
    else record(e.message || "error");
  }, true);
  window.addEventListener("unhandledrejection", function (e) {
    record("unhandled rejection: " + e.reason);
  });
  var original = console.error;
  console.error = function () {
    record(Array.prototype.join.call(arguments, " "));
    return original.apply(console, arguments);
  };
  document.addEventListener("DOMContentLoaded", show);
})();
