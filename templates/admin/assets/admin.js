// The editor's desk: live progress on an issue page. Pages work without this
// (a <noscript> refresh takes over); it only saves the reloads.
(function () {
  "use strict";
  var box = document.getElementById("progress");
  if (!box || box.getAttribute("data-live") !== "1") { return; }
  var url = box.getAttribute("data-url");
  var keys = ["sent", "queued", "sending", "failed", "bounced", "skipped", "done", "total"];
  function show(data) {
    keys.forEach(function (k) {
      var el = document.getElementById("p-" + k);
      if (el) { el.textContent = Number(data[k]).toLocaleString("en"); }
    });
    var bar = document.getElementById("p-bar");
    bar.max = data.total || 1;
    bar.value = data.done;
    document.getElementById("p-status").textContent = data.status;
    return data.status === "sending" && (data.left > 0 || data.running);
  }
  function poll() {
    fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.json(); })
      .then(function (data) {
        if (show(data)) { setTimeout(poll, 1000); }
        else { setTimeout(function () { window.location.reload(); }, 500); }
      })
      .catch(function () { setTimeout(function () { window.location.reload(); }, 5000); });
  }
  setTimeout(poll, 500);
})();
