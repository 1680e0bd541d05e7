"""The view's only assets, inline: its stylesheet and its script (no network, no file)."""

from __future__ import annotations

import base64
import hashlib
from typing import Final

from ..report import STYLE as REPORT_STYLE

__all__ = ["CSP", "SCRIPT", "STYLE"]

STYLE: Final = (
    REPORT_STYLE
    + """
header{display:flex;gap:1rem;align-items:baseline;border-bottom:1px solid #d0d7de;
padding-bottom:.5rem}header a{font-weight:600;color:#1b1f24;text-decoration:none}
#live{font-size:.85rem;color:#57606a}#live.on{color:#1a7f37}#live.off{color:#cf222e}
.status{font-weight:600}.status-open{color:#0969da}.status-completed{color:#1a7f37}
.status-failed{color:#cf222e}.status-cancelled{color:#9a6700}.status-unknown{color:#57606a}
form.pick{margin:1rem 0}form.pick select{margin-right:.5rem}dl.facts{display:grid;
grid-template-columns:max-content auto;gap:.2rem 1rem}dl.facts dt{color:#57606a}
dl.facts dd{margin:0}.pages a{margin-right:.5rem}
"""
)

# The page keeps a server-sent event stream open; each event carries the version of every
# run. When one the page shows (data-watch: refs, or * for all) moved past the version the
# page was rendered at, the page fetches its own <main> again (?fragment=1) and swaps it in:
# rendering and escaping stay on the server, in one place.
SCRIPT: Final = """
(function () {
  "use strict";
  var live = document.getElementById("live");
  var busy = false, again = false;
  function main() { return document.querySelector("main"); }
  function wanted(versions) {
    var watch = main().getAttribute("data-watch");
    if (watch === "*") { return versions["*"]; }
    var most = 0;
    watch.split(" ").forEach(function (ref) { most = Math.max(most, versions.runs[ref] || 0); });
    return most;
  }
  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    var url = new URL(window.location.href);
    url.searchParams.set("fragment", "1");
    fetch(url.toString(), {cache: "no-store"}).then(function (response) {
      return response.ok ? response.text() : null;
    }).then(function (text) {
      if (text === null) { return; }
      var holder = document.createElement("template");
      holder.innerHTML = text;
      var fresh = holder.content.querySelector("main");
      if (!fresh) { return; }
      var old = main();
      var picked = {};
      old.querySelectorAll("select[name]").forEach(function (s) { picked[s.name] = s.value; });
      old.replaceWith(fresh);
      fresh.querySelectorAll("select[name]").forEach(function (s) {
        if (picked[s.name] !== undefined) { s.value = picked[s.name]; }
      });
    }).catch(function () {}).then(function () {
      busy = false;
      if (again) { again = false; refresh(); }
    });
  }
  var source = new EventSource("/events"), lost = false;
  source.onopen = function () {
    live.textContent = "live"; live.className = "on";
    // Back after a lost connection (perhaps a restarted server, whose versions start
    // again from 0): the page may be behind, whatever the next versions say.
    if (lost) { lost = false; refresh(); }
  };
  source.onerror = function () {
    lost = true; live.textContent = "reconnecting"; live.className = "off";
  };
  source.onmessage = function (event) {
    var versions = JSON.parse(event.data);
    var shown = Number(main().getAttribute("data-version"));
    if (wanted(versions) > shown) { refresh(); }
  };
})();
"""


def _digest(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


# Only this script and this stylesheet run; the page talks only to its own server.
CSP: Final = (
    "default-src 'none'; "
    f"script-src 'sha256-{_digest(SCRIPT)}'; "
    f"style-src 'sha256-{_digest(STYLE)}'; "
    "connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
