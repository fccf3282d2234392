"""The sky viewer: the published collection served on loopback with an Aladin Lite page.

Aladin Lite (GPL-3.0) is not shipped with skyassets (BSD-3-Clause): ``scripts/viewer.sh install``
fetches it from the npm registry into ``<home>/viewer`` and this server hands it to the browser.
The page shows each target's composites and mosaics as HiPS layers, the footprints of its catalogued
images on top, and a clicked image's catalog row.
"""

from __future__ import annotations

import json
import os
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from skyassets.lake.home import Home

__all__ = ["ALADIN_ENV", "aladin_script", "collection_index", "make_server", "serve_in_background"]

ALADIN_ENV = "SKYASSETS_ALADIN_JS"


def aladin_script(home: Home) -> Path:
    """Aladin Lite's ``aladin.js``: ``$SKYASSETS_ALADIN_JS`` or where ``scripts/viewer.sh install`` puts it."""
    path = Path(os.environ.get(ALADIN_ENV) or home.root / "viewer" / "node_modules" / "aladin-lite" / "dist" /
                "aladin.js")
    if not path.is_file():
        raise FileNotFoundError(f"Aladin Lite not found at {path}: run scripts/viewer.sh install "
                                f"(or set {ALADIN_ENV} to an aladin.js)")
    return path


def collection_index(published: Path) -> list[dict]:
    """The published targets, newest first, each with its pyramids (from ``hipslist``), composites first."""
    try:
        text = (published / "hipslist").read_text()
    except OSError as exc:
        raise FileNotFoundError(f"{published}: no published collection (hipslist missing): {exc}") from exc
    targets: dict[str, dict] = {}
    for block in text.split("\n\n"):
        record = {}
        for line in block.splitlines():
            if "=" in line and not line.startswith("#"):
                key, value = line.split("=", 1)
                record[key.strip()] = value.strip()
        if "hips_service_url" not in record:
            continue
        target = record.get("skyassets_target", "")
        entry = targets.setdefault(target, {"target": target, "layers": [],
                                            "released": record.get("hips_release_date", "")})
        entry["layers"].append({
            "title": record.get("obs_title", ""), "path": record["hips_service_url"].rsplit("/", 2)[-2:],
            "kind": record.get("skyassets_kind", ""), "format": record.get("hips_tile_format", ""),
            "order": int(record.get("hips_order", 0)), "ra": float(record.get("hips_initial_ra", 0)),
            "dec": float(record.get("hips_initial_dec", 0)), "fov": float(record.get("hips_initial_fov", 1)),
            "cut": record.get("hips_pixel_cut", ""),
        })
    for entry in targets.values():
        entry["layers"].sort(key=lambda layer: layer["kind"] != "composite")
        for layer in entry["layers"]:
            layer["path"] = "/".join(layer["path"])
    return sorted(targets.values(), key=lambda t: t["released"], reverse=True)


class _Handler(SimpleHTTPRequestHandler):
    """Files of the published folder under ``/collection/``, Aladin Lite, the page and the index."""

    def __init__(self, *args, published: Path, aladin: Path | None, **kwargs):
        self.published, self.aladin = published, aladin
        super().__init__(*args, directory=str(published), **kwargs)

    def log_message(self, format: str, *args) -> None:  # quiet: the terminal shows the address only
        pass

    def _send(self, body: bytes, content_type: str) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = unquote(urlsplit(self.path).path)
        if path in ("/", "/index.html"):
            return self._send(PAGE.encode(), "text/html; charset=utf-8")
        if path == "/vendor/aladin.js" and self.aladin is not None:
            return self._send(self.aladin.read_bytes(), "text/javascript")
        if path == "/collection.json":
            return self._send(json.dumps(collection_index(self.published)).encode(), "application/json")
        if path.startswith("/collection/"):
            self.path = path.removeprefix("/collection")  # served from the published folder, never above it
            return super().do_GET()
        self.send_error(HTTPStatus.NOT_FOUND)


def make_server(published: Path, aladin: Path | None, port: int = 0) -> ThreadingHTTPServer:
    """A server on 127.0.0.1 (``port`` 0: any free one) for the collection in ``published``; without
    ``aladin`` it serves the collection only (for viewers that bring their own Aladin Lite)."""
    collection_index(published)  # fails now, with the reason, rather than in the browser
    handler = partial(_Handler, published=Path(published).resolve(), aladin=None if aladin is None else Path(aladin))
    return ThreadingHTTPServer(("127.0.0.1", port), handler)


_BACKGROUND: dict[Path, ThreadingHTTPServer] = {}


def serve_in_background(published: Path) -> str:
    """The loopback address (``http://127.0.0.1:PORT``) of a server for the collection in
    ``published``, started in a daemon thread on first use and kept for the process: a notebook's
    viewer widget loads the tiles from it."""
    from threading import Thread

    folder = Path(published).resolve()
    server = _BACKGROUND.get(folder)
    if server is None:
        server = make_server(folder, None)
        Thread(target=server.serve_forever, name=f"skyassets-sky-{server.server_address[1]}", daemon=True).start()
        _BACKGROUND[folder] = server
    return f"http://127.0.0.1:{server.server_address[1]}"


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>skyassets sky</title>
<style>
 body { margin: 0; font: 14px sans-serif; background: #111; color: #ddd; display: flex; height: 100vh; }
 #side { width: 320px; padding: 8px; overflow: auto; box-sizing: border-box; }
 #sky { flex: 1; position: relative; }
 select { width: 100%; margin-bottom: 6px; }
 pre { white-space: pre-wrap; font-size: 12px; }
</style></head>
<body>
<div id="side">
 <label>Target <select id="target"></select></label>
 <label>Layer <select id="layer"></select></label>
 <p>Yellow: footprints of the catalogued images. Click one for its catalog row.</p>
 <pre id="row">(no image selected)</pre>
 <pre id="status" hidden></pre>
</div>
<div id="sky"></div>
<script type="module">
import A from "/vendor/aladin.js";
const params = new URLSearchParams(location.search);
const collection = await (await fetch("collection.json")).json();
const status = {ready: false, target: null, layer: null, footprints: [], drawn: 0, selected: null};
const show = () => { document.getElementById("status").textContent = JSON.stringify(status); };
const targetSelect = document.getElementById("target"), layerSelect = document.getElementById("layer");
for (const t of collection) targetSelect.add(new Option(t.target, t.target));
await A.init;
const aladin = A.aladin("#sky", {showReticle: false, showCooGrid: false, showLayersControl: false,
  showSimbadPointerControl: false, showProjectionControl: false, showFullscreenControl: false,
  showFrame: false, showGotoControl: false, showZoomControl: true, showContextMenu: false});
let footprints = [], overlay = null;

function inside(poly, ra, dec) {  // point in polygon on the tangent plane at (ra, dec)
  const c = Math.cos(dec * Math.PI / 180);
  const xy = poly.map(([r, d]) => [((r - ra + 540) % 360 - 180) * c, d - dec]);
  let hit = false;
  for (let i = 0, j = xy.length - 1; i < xy.length; j = i++) {
    const [xi, yi] = xy[i], [xj, yj] = xy[j];
    if ((yi > 0) !== (yj > 0) && 0 < (xj - xi) * (0 - yi) / (yj - yi) + xi) hit = !hit;
  }
  return hit;
}

function select(ra, dec) {
  const hits = footprints.filter(f => inside(f.polygon, ra, dec));
  const row = hits.length ? hits[0] : null;
  status.selected = row ? `${row.obs_id}/${row.file_name}[${row.hdu_index}]` : null;
  document.getElementById("row").textContent = row
    ? Object.entries(row).filter(([k]) => k !== "polygon").map(([k, v]) => `${k}: ${v}`).join("\\n")
      + (hits.length > 1 ? `\\n(${hits.length - 1} more images here)` : "")
    : "(no catalogued image here)";
  show();
}

document.getElementById("sky").addEventListener("click", (event) => {
  const box = event.currentTarget.getBoundingClientRect();
  const world = aladin.pix2world(event.clientX - box.left, event.clientY - box.top);
  if (world) select(world[0], world[1]);
});

function setLayer(t, layer) {
  const url = new URL(`collection/${layer.path}`, location.href).href;
  const options = {imgFormat: layer.format, maxOrder: layer.order};
  if (layer.format === "fits" && layer.cut) {
    const [lo, hi] = layer.cut.split(" ").map(Number);
    Object.assign(options, {minCut: lo, maxCut: hi, stretch: "asinh"});
  }
  aladin.setBaseImageLayer(aladin.newImageSurvey(url, options));
  status.layer = layer.title; show();
}

async function setTarget(name) {
  const t = collection.find(c => c.target === name) || collection[0];
  if (!t) return;
  status.target = t.target;
  layerSelect.innerHTML = "";
  t.layers.forEach((l, i) => layerSelect.add(new Option(l.title, i)));
  setLayer(t, t.layers[0]);
  aladin.gotoRaDec(t.layers[0].ra, t.layers[0].dec);
  aladin.setFoV(t.layers[0].fov);
  footprints = await (await fetch(`collection/${encodeURIComponent(t.target)}/footprints.json`)).json();
  if (overlay) overlay.removeAll();
  else { overlay = A.graphicOverlay({color: "#ffd400", lineWidth: 2}); aladin.addOverlay(overlay); }
  overlay.addFootprints(footprints.map(f => A.polygon(f.polygon)));
  status.footprints = footprints.map(f => `${f.obs_id}/${f.file_name}[${f.hdu_index}]`);
  status.drawn = overlay.overlays ? overlay.overlays.length : footprints.length;
  status.ready = true; show();
  layerSelect.onchange = () => setLayer(t, t.layers[Number(layerSelect.value)]);
}
targetSelect.onchange = () => setTarget(targetSelect.value);
const wanted = params.get("target");
if (wanted) targetSelect.value = wanted;
await setTarget(targetSelect.value);
const pick = params.get("select");  // "ra,dec": click there, as a user would
if (pick) {
  setTimeout(() => {
    const [ra, dec] = pick.split(",").map(Number);
    const [x, y] = aladin.world2pix(ra, dec);
    const box = document.getElementById("sky").getBoundingClientRect();
    document.getElementById("sky").dispatchEvent(new MouseEvent("click", {bubbles: true,
      clientX: box.left + x, clientY: box.top + y}));
  }, 500);
}
</script>
</body></html>
"""
