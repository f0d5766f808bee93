// An element with data-refresh="N" is fetched again every N seconds and swapped in place,
// so an overview left open (on a phone, say) stays current without reloading the page.
(function () {
  "use strict";
  var live = document.querySelector("[data-refresh]");
  if (!live) return;
  var everyMs = Number(live.getAttribute("data-refresh")) * 1000;
  setInterval(function () {
    if (document.hidden) return;
    fetch(location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (answer) { return answer.ok ? answer.text() : null; })
      .then(function (html) {
        if (!html) return;
        var fresh = new DOMParser().parseFromString(html, "text/html").querySelector("[data-refresh]");
        if (fresh) live.replaceChildren.apply(live, Array.from(fresh.childNodes));
      })
      .catch(function () { /* the next tick tries again */ });
  }, everyMs);
})();
