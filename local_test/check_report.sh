#!/usr/bin/env bash
# Opens a job's report.html in a real headless browser (Debian's chromium), saves a screenshot
# and fails if the page shows an error, a broken or missing image, a script error, or loads
# anything from outside itself.
#
#   local_test/check_report.sh REPORT_HTML SCREENSHOT_PNG
#
# Installs chromium with apt-get when it is missing (root, Debian). The checks run in a copy
# of the page with a small script added at its end; the screenshot is of the page as it is.
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 REPORT_HTML SCREENSHOT_PNG" >&2
    exit 2
fi
report=$(realpath "$1")
screenshot=$(realpath -m "$2")
[[ -s $report ]] || { echo "check_report: $report is missing or empty" >&2; exit 1; }

browser=$(command -v chromium || command -v chromium-browser || true)
if [[ -z $browser ]]; then
    echo "check_report: installing Debian's chromium" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    browser=$(command -v chromium)
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Root needs --no-sandbox; a fresh profile keeps runs independent; the virtual time budget
# lets the page finish loading and decoding before the DOM is read.
run_browser() {
    timeout 120 "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars \
        --no-first-run --user-data-dir="$work/profile" --virtual-time-budget=10000 "$@" \
        2>>"$work/browser.log"
}

# The checks, written by the page itself into <pre id="report-check"> once it has loaded.
cat >"$work/check.js" <<'EOF'
<script>
window.__errors = [];
window.addEventListener("error", (e) => window.__errors.push(
  e instanceof ErrorEvent ? e.message : `${e.target.tagName} failed to load`), true);
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const broken = images.filter((i) => !i.complete || i.naturalWidth === 0).map((i) => i.alt);
  const external = performance.getEntriesByType("resource").map((r) => r.name);
  const text = document.body ? document.body.innerText : "";
  const result = {
    title: document.title,
    images: images.length,
    broken: broken,
    external: external,
    errors: window.__errors,
    error_page: !!document.querySelector("#main-frame-error, .neterror"),
    traceback: /Traceback \(most recent call last\)/.test(text),
    sections: Array.from(document.querySelectorAll("section[id]")).map((s) => s.id),
  };
  const out = document.createElement("pre");
  out.id = "report-check";
  out.textContent = JSON.stringify(result);
  document.documentElement.appendChild(out);
});
</script>
EOF
# Added right after the doctype, so that it sees every error and image of the page.
python3 - "$report" "$work/check.js" "$work/checked.html" <<'EOF'
import re
import sys
from pathlib import Path

page, script = Path(sys.argv[1]).read_text(), Path(sys.argv[2]).read_text()
doctype = re.match(r"\s*<!doctype[^>]*>", page, re.I)
cut = doctype.end() if doctype else 0
Path(sys.argv[3]).write_text(page[:cut] + script + page[cut:])
EOF

run_browser --dump-dom "file://$work/checked.html" >"$work/dom.html"
mkdir -p "$(dirname "$screenshot")"
run_browser --window-size=1280,2200 --screenshot="$screenshot" "file://$report" >/dev/null

python3 - "$work/dom.html" "$screenshot" <<'EOF'
import html
import json
import re
import sys
from pathlib import Path

dom = Path(sys.argv[1]).read_text()
found = re.search(r'<pre id="report-check">(.*?)</pre>', dom, re.S)
if not found:
    sys.exit("check_report: the page did not finish loading (no check result in the DOM)")
result = json.loads(html.unescape(found.group(1)))
problems = []
if result["error_page"] or result["traceback"]:
    problems.append("the page shows an error")
if not result["title"].startswith("TFT forecasting report"):
    problems.append(f"unexpected title {result['title']!r}")
if result["images"] == 0:
    problems.append("no image on the page")
if result["broken"]:
    problems.append(f"{len(result['broken'])} image(s) not decoded: {result['broken']}")
if result["external"]:
    problems.append(f"loads from outside the page: {result['external'][:5]}")
if result["errors"]:
    problems.append(f"errors: {result['errors'][:5]}")
screenshot = Path(sys.argv[2])
if not screenshot.is_file() or screenshot.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
    problems.append(f"no screenshot at {screenshot}")
if problems:
    sys.exit("check_report: " + "; ".join(problems))
print(
    f"check_report: {result['images']} images decoded, sections {', '.join(result['sections'])}; "
    f"screenshot {screenshot}"
)
EOF
