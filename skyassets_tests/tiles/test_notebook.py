"""The collection in a notebook: an ipyaladin widget on a target's layer, served from loopback, with its
coverage and the catalogued images' footprints."""

import pytest
import requests

from skyassets.lake.home import Home
from skyassets.tiles.notebook import footprint_regions, sky_widget
from skyassets.tiles.products import tile_target
from skyassets.tiles.publish import FolderDestination, publish_collection
from skyassets.tiles.viewer import collection_index
from skyassets_tests.tiles.test_products import IMAGES, TARGET, add_images, make_products

pytest.importorskip("ipyaladin", reason="ipyaladin is not installed")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = Home(tmp_path_factory.mktemp("notebook") / "home")
    make_products(home)
    add_images(home)
    tile_target(home, TARGET, width=64)
    publish_collection(home, FolderDestination(home.root / "published"))
    return home


def test_the_widget_shows_the_composite_served_from_loopback_with_the_footprints(home):
    widget = sky_widget(TARGET, home=home)
    [entry] = collection_index(home.root / "published")
    composite = entry["layers"][0]
    assert composite["kind"] == "composite"
    assert widget.survey.startswith("http://127.0.0.1:") and widget.survey.endswith(f"/collection/{composite['path']}")
    properties = requests.get(f"{widget.survey}/properties", timeout=10)
    assert properties.status_code == 200 and "hips_tile_format" in properties.text  # the tiles are served
    assert requests.get(f"{widget.survey}/Moc.fits", timeout=10).content[:6] == b"SIMPLE"
    kinds = {o.name if hasattr(o, "name") else str(o) for o in widget.overlays}
    assert {"coverage", "catalogued images"} <= kinds, kinds
    regions = footprint_regions(home, TARGET)
    assert len(regions) == len(IMAGES) and regions[0].startswith("POLYGON ICRS 149.993")
    assert widget.target.ra.deg == pytest.approx(composite["ra"]) and widget.fov.deg == pytest.approx(composite["fov"])


def test_a_layer_by_title_or_path_and_what_is_missing(home, tmp_path):
    mosaic = sky_widget(TARGET, home=home, layer=f"{TARGET}/mosaic_nircam_f444w")
    assert mosaic.survey.endswith("/mosaic_nircam_f444w")
    assert sky_widget(home=home).survey == sky_widget(TARGET, home=home).survey  # the newest target
    with pytest.raises(KeyError, match="NGC-9999 is not in the collection"):
        sky_widget("NGC-9999", home=home)
    with pytest.raises(KeyError, match="layer nothing is not one of"):
        sky_widget(TARGET, home=home, layer="nothing")
    with pytest.raises(FileNotFoundError, match="hipslist missing"):
        sky_widget(home=Home(tmp_path / "empty"))
