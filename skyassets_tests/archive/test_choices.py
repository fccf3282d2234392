"""What the watchlist chose of each observation's products, against what it chooses now."""

from skyassets.archive.choices import choices_digest, products_rechosen
from skyassets.archive.watchlist import parse_watchlist
from skyassets.lake.home import Home

RING = "entries:\n  - name: ring\n    target: NGC 3132\n"


def _listed(lake, obs_id: str, entry: str, products: str | None) -> None:
    """An observation's products as mast_products lists them (with the choice, or from before choices were kept)."""
    lake.write("mast_products", [{"partition": obs_id, "obs_id": obs_id, "productFilename": f"{obs_id}_cal.fits"}],
               partition=obs_id)
    if products is not None:
        lake.write("product_choices", [{"obs_id": obs_id, "products": products}], partition=obs_id)


def test_an_edited_entry_rechooses_its_observations_and_no_other(tmp_path):
    lake = Home(tmp_path).tables
    lake.write("mast_observations", [{"obs_id": "o1", "watchlist_entry": "ring"},
                                     {"obs_id": "o2", "watchlist_entry": "smacs,ring"},
                                     {"obs_id": "o3", "watchlist_entry": "gone"}])
    before = parse_watchlist(RING)
    for obs_id, entry in (("o1", "ring"), ("o2", "smacs,ring"), ("o3", "gone")):
        _listed(lake, obs_id, entry, before.products_for(entry).text)
    assert products_rechosen(lake, before, ["o1", "o2", "o3"]) == {}
    edited = parse_watchlist(RING + "    products: {calib_level: [3]}\n")
    assert choices_digest(edited) != choices_digest(before) == choices_digest(parse_watchlist(RING))
    assert products_rechosen(lake, edited, ["o1", "o2", "o3"]) == {"o1": "ring", "o2": "smacs,ring"}
    # an entry that cannot be read now: its observations are left as they are, not fetched with the defaults
    unreadable = parse_watchlist("entries:\n  - name: ring\n    target: NGC 3132\n    radius: far\n"
                                 "  - name: smacs\n    program: 2736\n")
    assert [name for name, _ in unreadable.invalid] == ["ring"]
    assert products_rechosen(lake, unreadable, ["o1", "o2", "o3"]) == {}


def test_observations_listed_before_choices_were_kept_take_the_choice_now_as_theirs(tmp_path):
    lake = Home(tmp_path).tables
    lake.write("mast_observations", [{"obs_id": "o1", "watchlist_entry": "ring"}])
    _listed(lake, "o1", "ring", None)
    before = parse_watchlist(RING)
    assert products_rechosen(lake, before, ["o1", "never-listed"]) == {}  # nothing fetched again on upgrade
    assert lake.read("product_choices", "o1")["products"].tolist() == [before.products_for("ring").text]
    assert not lake.exists("product_choices", "never-listed")
    edited = parse_watchlist(RING + "    products: {calib_level: [3]}\n")
    assert products_rechosen(lake, edited, ["o1"]) == {"o1": "ring"}  # and an edit after it is seen
