"""The published collection in a notebook: ipyaladin (Aladin Lite as a Jupyter widget), when installed.

``sky_widget("NGC-3132")`` serves the collection on loopback (``viewer.serve_in_background``), and
returns a widget whose base survey is the target's composite (or another of its layers), with the
layer's coverage (its MOC) and the footprints of the target's catalogued images drawn on top, as
``skyassets sky`` shows them in a browser.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from skyassets.lake.home import Home
from skyassets.tiles.products import footprints
from skyassets.tiles.viewer import collection_index, serve_in_background

__all__ = ["footprint_regions", "sky_widget"]


def footprint_regions(home: Home, target: str) -> list[str]:
    """The sky polygons of ``target``'s catalogued images as STC-S strings (``POLYGON ICRS ra dec ...``)."""
    return ["POLYGON ICRS " + " ".join(f"{ra:.8f} {dec:.8f}" for ra, dec in image["polygon"])
            for image in footprints(home, target)]


def sky_widget(target: str | None = None, *, layer: str | None = None, home: Home | None = None,
               published: str | Path | None = None, height: int = 500) -> Any:
    """An ipyaladin ``Aladin`` widget on ``target`` (default: the newest published) showing ``layer``
    (a layer's title or path, default: the target's first, its composite when it has one)."""
    try:
        from ipyaladin import Aladin
    except ImportError as exc:
        raise ImportError("the notebook sky viewer needs ipyaladin: pip install ipyaladin") from exc
    home = home or Home.from_env()
    folder = Path(published) if published is not None else home.root / "published"
    entries = collection_index(folder)
    if not entries:
        raise FileNotFoundError(f"{folder}: the collection has no target yet")
    known = {e["target"]: e for e in entries}
    if target is not None and target not in known:
        raise KeyError(f"target {target} is not in the collection at {folder}; published: {', '.join(known)}")
    entry = known[target] if target is not None else entries[0]
    layers = entry["layers"]
    chosen = next((x for x in layers if layer in (x["title"], x["path"])), None) if layer else layers[0]
    if chosen is None:
        raise KeyError(f"layer {layer} is not one of {entry['target']}'s: "
                       + ", ".join(x["title"] or x["path"] for x in layers))
    url = f"{serve_in_background(folder)}/collection/{chosen['path']}"
    widget = Aladin(target=f"{chosen['ra']} {chosen['dec']}", fov=chosen["fov"], survey=url, height=height)
    widget.add_moc(f"{url}/Moc.fits", color="cyan", opacity=0.15, name="coverage")
    regions = footprint_regions(home, entry["target"])
    if regions:
        widget.add_graphic_overlay_from_stcs(regions, color="yellow", name="catalogued images")
    return widget
