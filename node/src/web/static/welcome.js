// The welcome page refreshes itself: every two seconds it reads the page again and swaps
// in its live part, so a person sees servers come and go without reloading. No build step.
(function () {
  "use strict";
  var PERIOD_MS = 2000;
  function stale(why) {
    document.body.classList.add("stale");
    var s = document.getElementById("stale");
    if (s) {
      s.textContent = "The node does not answer (" + why + "); trying again.";
    }
  }
  function refresh() {
    fetch("/", { cache: "no-store", credentials: "same-origin" })
      .then(function (r) {
        if (!r.ok) {
          throw new Error("HTTP " + r.status);
        }
        return r.text();
      })
      .then(function (text) {
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.getElementById("live");
        var live = document.getElementById("live");
        if (fresh && live) {
          live.replaceWith(document.importNode(fresh, true));
        }
        document.body.classList.remove("stale");
      })
      .catch(function (e) {
        stale(e.message || String(e));
      })
      .finally(function () {
        window.setTimeout(refresh, PERIOD_MS);
      });
  }
  window.setTimeout(refresh, PERIOD_MS);
})();
