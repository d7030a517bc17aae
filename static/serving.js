// Small enhancements on top of pages that work without JavaScript:
// confirmation before destructive forms, Browser/Curl/Python tabs, copy buttons.
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

  document.addEventListener("DOMContentLoaded", function () { initTabs(document); });
  document.addEventListener("htmx:afterSettle", function (event) { initTabs(event.target); });
})();
