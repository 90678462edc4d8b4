// agentfsm ui: live updates of a run page (Server-Sent Events). Vendored, no dependencies.
// Model text streams into the "live output" box (a block per try), steps add a line, and on
// each commit this page is fetched again and its <main> swapped in. Text only: textContent.
(function () {
  "use strict";
  var script = document.currentScript;
  var stream = script && script.getAttribute("data-stream");
  if (!stream || !window.EventSource) return;
  var block = null, blockKey = "";
  function byId(id) { return document.getElementById(id); }
  function say(text) { var live = byId("live"); if (live) live.textContent = text; }
  function add(tag, cls, text) {
    var box = byId("output"), el = document.createElement(tag);
    if (!box) return null;
    box.hidden = false;
    el.className = cls;
    el.textContent = text;
    box.appendChild(el);
    return el;
  }
  function refresh() {
    fetch(window.location.href, { headers: { Accept: "text/html" }, credentials: "same-origin" })
      .then(function (r) { return r.text(); })
      .then(function (text) {
        var fresh = new DOMParser().parseFromString(text, "text/html").getElementById("main");
        var main = byId("main");
        if (fresh && main) main.replaceWith(fresh);
      });
  }
  var source = new EventSource(stream);
  source.onopen = function () { say("live"); };
  source.onerror = function () { say("reconnecting…"); };
  source.addEventListener("token", function (event) {
    var t = JSON.parse(event.data), key = t.seq + "/" + t.attempt;
    watched = true;
    if (!block || key !== blockKey) {
      add("div", "try", "seq " + t.seq + " · try " + t.attempt);
      block = add("pre", "tokens", "");
      blockKey = key;
    }
    if (block) block.textContent += t.text;
  });
  var watched = false;  // whether this page has seen the run move (else it was over already)
  var ends = { done: "the run is done", failed: "the run failed: its errors are listed below",
               waiting: "the run waits for an event: answer it with the form on this page",
               cancelled: "the run was cancelled" };
  source.addEventListener("step", function (event) {
    var step = JSON.parse(event.data);
    block = null;
    if (step.kind === "stopped") {  // the run stopped being driven: say so, in words
      var status = (step.text || "").replace(/^run /, "");
      say(ends[status] || step.text);
      if (watched) add("div", "end", ends[status] || step.text);
      return;
    }
    watched = true;
    add("div", "step", step.text);
  });
  source.addEventListener("commit", function (event) {
    var run = JSON.parse(event.data);
    // A commit that ends the drive says so itself: its "stopped" item may come before it.
    say(ends[run.status] || "live: seq " + run.seq + " · " + run.state + " · " + run.status);
    block = null;
    watched = true;
    refresh();
  });
  source.addEventListener("end", function () {
    source.close();
    var live = byId("live");
    if (live && live.textContent.indexOf("the run") !== 0) say("the run is over");
  });
})();
