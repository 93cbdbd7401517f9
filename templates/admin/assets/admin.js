// The editor's desk: progressive touches only. Every page works without this file
// (issue pages refresh themselves from a <noscript>; the story order has buttons).
(function () {
  "use strict";

  // Live progress on an issue page: poll the JSON endpoint once a second.
  function followProgress(box) {
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
        .then(function (r) { if (!r.ok) { throw new Error(String(r.status)); } return r.json(); })
        .then(function (data) {
          if (show(data)) { setTimeout(poll, 1000); }
          else { setTimeout(function () { window.location.reload(); }, 500); }
        })
        .catch(function () { setTimeout(function () { window.location.reload(); }, 5000); });
    }
    setTimeout(poll, 500);
  }

  // The next digest's order: a drag handle per row; the new order is saved at once.
  function dragOrder(table) {
    var body = table.tBodies[0];
    var dragged = null;
    Array.prototype.forEach.call(body.rows, function (row) {
      var handle = document.createElement("span");
      handle.className = "handle";
      handle.textContent = "\u2630";
      handle.setAttribute("aria-hidden", "true");
      handle.title = "Drag to reorder";
      row.cells[0].insertBefore(handle, row.cells[0].firstChild);
      row.draggable = true;
      row.addEventListener("dragstart", function (e) {
        dragged = row;
        row.classList.add("dragging");
        e.dataTransfer.effectAllowed = "move";
        e.dataTransfer.setData("text/plain", row.getAttribute("data-id"));
      });
      row.addEventListener("dragend", function () { row.classList.remove("dragging"); });
      row.addEventListener("dragover", function (e) {
        e.preventDefault();
        if (!dragged || dragged === row) { return; }
        var box = row.getBoundingClientRect();
        var after = e.clientY > box.top + box.height / 2;
        body.insertBefore(dragged, after ? row.nextSibling : row);
      });
      row.addEventListener("drop", function (e) { e.preventDefault(); save(); });
    });
    function save() {
      var ids = Array.prototype.map.call(body.rows, function (r) { return r.getAttribute("data-id"); });
      var form = new FormData();
      form.append("csrf_token", table.getAttribute("data-csrf"));
      form.append("order", ids.join(","));
      fetch(table.getAttribute("data-url"),
            { method: "POST", body: form, credentials: "same-origin", redirect: "manual" })
        .then(function () { window.location.reload(); });
    }
  }

  var progress = document.getElementById("progress");
  if (progress && progress.getAttribute("data-live") === "1") { followProgress(progress); }
  var order = document.getElementById("story-order");
  if (order && order.tBodies.length) { dragOrder(order); }
})();
