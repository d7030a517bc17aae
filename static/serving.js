// Small enhancements on top of pages that work without JavaScript:
// confirmation before destructive forms, Browser/Curl/Python tabs, copy buttons, and
// Send Request straight to the version's scoring URL.
(function () {
  "use strict";

  function initTabs(root) {
    root.querySelectorAll("[data-tabs]").forEach(function (list) {
      if (list.dataset.ready) return;
      list.dataset.ready = "1";
      var selected = list.querySelector("[aria-selected=true]") || list.querySelector("[data-tab]");
      show(list, selected.dataset.tab);
    });
  }

  function show(list, name) {
    var scope = list.parentElement;
    list.querySelectorAll("[data-tab]").forEach(function (tab) {
      tab.setAttribute("aria-selected", tab.dataset.tab === name ? "true" : "false");
    });
    scope.querySelectorAll(":scope > [data-tab-panel]").forEach(function (panel) {
      panel.hidden = panel.dataset.tabPanel !== name;
    });
  }

  document.addEventListener("click", function (event) {
    var tab = event.target.closest("[data-tabs] [data-tab]");
    if (tab) {
      show(tab.closest("[data-tabs]"), tab.dataset.tab);
      return;
    }
    var copy = event.target.closest("[data-copy]");
    if (copy) {
      var source = document.querySelector(copy.dataset.copy);
      var text = source ? source.textContent : "";
      var done = function () {
        copy.textContent = "Copied";
        setTimeout(function () { copy.textContent = "Copy"; }, 1500);
      };
      if (navigator.clipboard) {
        navigator.clipboard.writeText(text).then(done, function () {});
      }
    }
  });

  document.addEventListener("submit", function (event) {
    var form = event.target.closest("form[data-confirm]");
    if (form && !window.confirm(form.dataset.confirm)) {
      event.preventDefault();
    }
  });

  // Send Request: the browser posts the box to the version's scoring URL as the signed-in
  // user (session cookie and CSRF token), where the front door answers it like any client's
  // request: a slow model holds no page thread. Without JavaScript the form posts to the page.
  document.addEventListener("submit", function (event) {
    var form = event.target.closest("form[data-score]");
    if (!form || event.defaultPrevented) return;
    event.preventDefault();
    if (form.dataset.sending) return;
    send(form, document.getElementById("response"));
  });

  function send(form, box) {
    var started = performance.now();
    form.dataset.sending = "1";
    box.setAttribute("aria-busy", "true");
    box.replaceChildren(pending());
    fetch(form.dataset.score, {
      method: "POST",
      credentials: "same-origin",
      headers: {
        "Content-Type": "application/json",
        "X-CSRFToken": form.elements.csrfmiddlewaretoken.value,
      },
      body: form.elements.body.value,
    }).then(function (response) {
      return response.text().then(function (text) {
        showAnswer(box, response.status, performance.now() - started, text);
      });
    }).catch(function (error) {
      showAnswer(box, 0, performance.now() - started, "The request got no answer: " + error.message);
    }).finally(function () {
      delete form.dataset.sending;
      box.removeAttribute("aria-busy");
    });
  }

  function pending() {
    var note = document.createElement("p");
    note.className = "sending muted";
    note.dataset.testid = "sending";
    note.textContent = "Sending request… the answer shows here.";
    return note;
  }

  // The same box the page renders for a request sent without JavaScript.
  function showAnswer(box, status, ms, text) {
    var result = document.createElement("div");
    result.className = "response " + (status >= 200 && status < 300 ? "ok" : "error");
    result.dataset.testid = "response";
    var line = document.createElement("p");
    var code = document.createElement("strong");
    code.textContent = status ? String(status) : "—";
    line.append("Status ", code, " · " + ms.toFixed(1) + " ms");
    var body = document.createElement("pre");
    body.textContent = pretty(text);
    result.append(line, body);
    box.replaceChildren(result);
  }

  function pretty(text) {
    try {
      return JSON.stringify(JSON.parse(text), null, 2);
    } catch (error) {
      return text;
    }
  }

  document.addEventListener("DOMContentLoaded", function () { initTabs(document); });
  document.addEventListener("htmx:afterSettle", function (event) { initTabs(event.target); });
})();
