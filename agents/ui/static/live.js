// agentfsm ui: live updates of a run page (Server-Sent Events). Vendored, no dependencies.
// On each commit of the run, fetch this page again and swap its <main> in.
(function () {
  "use strict";
  var script = document.currentScript;
  var stream = script && script.getAttribute("data-stream");
  if (!stream || !window.EventSource) return;
  function say(text) {
    var live = document.getElementById("live");
    if (live) live.textContent = text;
  }
  function refresh() {
    fetch(window.location.href, { headers: { Accept: "text/html" }, credentials: "same-origin" })
      .then(function (r) { return r.text(); })
      .then(function (text) {
        var fresh = new DOMParser().parseFromString(text, "text/html").getElementById("main");
        var main = document.getElementById("main");
        if (fresh && main) main.replaceWith(fresh);
      });
  }
  var source = new EventSource(stream);
  source.onopen = function () { say("live"); };
  source.onerror = function () { say("reconnecting…"); };
  source.addEventListener("commit", function (event) {
    var run = JSON.parse(event.data);
    say("live: seq " + run.seq + " · " + run.state + " · " + run.status);
    refresh();
  });
})();
