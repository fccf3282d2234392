import pytest

from skyassets.archive.watchlist import (
    ProductSpec,
    WatchlistError,
    load_watchlist,
    parse_watchlist,
    unknown_filters,
)


def test_packaged_watchlist_has_every_search_kind():
    wl = load_watchlist()
    kinds = {entry.kind for entry in wl.entries}
    assert {"target", "coordinates", "program"} <= kinds


def test_entry_criteria_map_to_caom_columns():
    wl = parse_watchlist(
        """
entries:
  - name: deep
    coordinates: {ra: 10.5, dec: -20}
    radius: 90 arcsec
    collection: JWST
    instrument: NIRCAM/IMAGE
    filters: [F200W, F444W]
    calib_level: 3
    product_type: image
    exposure: [100, 5000]
    products: {subgroups: [i2d]}
  - obs_id: [a1, a2]
"""
    )
    deep, ids = wl.entries
    assert deep.coordinates.ra.deg == pytest.approx(10.5)
    assert deep.radius.arcsec == pytest.approx(90)
    assert deep.criteria == {
        "obs_collection": ["JWST"],
        "instrument_name": ["NIRCAM/IMAGE"],
        "filters": ["F200W", "F444W"],
        "calib_level": [3],
        "dataproduct_type": ["image"],
        "t_exptime": [100.0, 5000.0],
    }
    assert deep.products.subgroups == ("I2D",)
    assert ids.name == "obs_id:['a1', 'a2']" and ids.obs_id == ("a1", "a2")
    assert ids.products == ProductSpec()


def test_sexagesimal_coordinates():
    wl = parse_watchlist("entries: [{coordinates: '10:07:01.8 -40:26:11', radius: 1 arcmin}]")
    assert wl.entries[0].coordinates.ra.deg == pytest.approx(151.7575, abs=1e-3)


@pytest.mark.parametrize(
    "text, message",
    [
        ("entries: []", "non-empty 'entries'"),
        ("entries: [{name: a}]", "exactly one of"),
        ("entries: [{name: a, target: M1, program: 1}]", "exactly one of"),
        ("entries: [{name: a, target: M1, colection: JWST}]", "unknown keys ['colection']"),
        ("entries: [{name: a, target: M1, radius: 5 kg}]", "entry 'a'"),
        ("entries: [{name: a, target: M1, exposure: 5}]", "'exposure' is a range"),
        ("entries: [{name: a, target: M1}, {name: a, program: 3}]", "unique"),
        ("entries: [{name: a, target: M1, products: {kind: x}}]", "'products' takes"),
        ("entries: [a: b: c]", "not valid YAML"),
        ("entries: [{name: a, target: M1, calib_level: [three]}]", "entry 'a': 'calib_level' takes whole numbers, "
                                                                    "not 'three'"),
        ("entries: [{name: a, target: M1, exposure: [ten, 20]}]", "entry 'a': 'exposure' takes numbers, not 'ten'"),
        ("entries: [{name: a, target: M1, exposure: [100, 10]}]", "'exposure' is a range [min, max] in seconds, "
                                                                   "min <= max"),
        ("entries: [{name: a, target: M1, exposure: [.nan, 10]}]", "'exposure' takes numbers, not nan"),
        ("entries: [{name: a, target: M1, products: {calib_level: [x]}}]", "'calib_level' takes whole numbers"),
        ("entries: [{name: a, target: M1, calib_level: [2.7]}]", "'calib_level' takes whole numbers, not 2.7"),
        ("entries: [{name: a, target: M1, products: {extensions: [1, {x: 2}]}}]", "'extensions' takes a name or a "
                                                                                  "list of names"),
        ("entries: [{name: a, target: M1, filters: {F200W: 1}}]", "'filters' takes a name or a list of names"),
        ("entries: [{name: a, target: [M1, M16]}]", "'target' is one name"),
        ("entries: [{name: [a], target: M1}]", "'name' is a text"),
        ("entries: [{name: a, coordinates: {ra: .nan, dec: 0}}]", "entry 'a': coordinates are two finite numbers"),
        ("entries: [{name: a, coordinates: {ra: 10}}]", "entry 'a': coordinates are {ra: ..., dec: ...}"),
        ("entries: [{name: a, coordinates: [1, 2, 3]}]", "entry 'a': coordinates are {ra: ..., dec: ...}"),
        ("defaults: [1]\nentries: [{name: a, target: M1}]", "'defaults' is a mapping with the key 'products'"),
        # an RA of 400 is a slip, not 40: refused as a dec of -95 is, in plain words
        ("entries: [{name: a, coordinates: '400.0 -95.0'}]", "entry 'a': ra is between 0 and 360 degrees, not 400"),
        ("entries: [{name: a, coordinates: {ra: 10, dec: -95}}]", "entry 'a': dec is between -90 and +90 degrees"),
        ("entries: [{name: a, coordinates: 'ten north'}]", "entry 'a': cannot read the coordinates 'ten north'"),
        ("entries: [{name: a, coordinates: '400d 10d'}]", "entry 'a': ra is between 0 and 360 degrees (24 hours)"),
        ("entries: [{name: a, coordinates: '25:00:00 -40:00:00'}]", "cannot read the coordinates '25:00:00 -40:00:00'"),
        ("entries: [{name: a, target: M1}, {name: b, coordinates: 'x y z'}, {name: a, program: 3}]", "unique"),
    ],
)
def test_bad_watchlists_name_the_file_and_the_reason(text, message):
    with pytest.raises(WatchlistError) as err:
        parse_watchlist(text, "my-watchlist.yaml")
    assert "my-watchlist.yaml" in str(err.value)
    assert message in str(err.value)


def test_a_misspelt_key_is_named_with_the_key_it_looks_like():
    (_, one), (_, two) = parse_watchlist("entries: [{name: a, targt: M1}, {name: b, target: M1, colection: JWST, "
                                         "filtrs: F200W, zzz: 1}, {name: c, target: M1}]", "mine.yaml").invalid
    assert one.startswith("mine.yaml: entry 'a': unknown keys ['targt'] (did you mean 'target'?); known keys are ")
    assert two.startswith("mine.yaml: entry 'b': unknown keys ['colection', 'filtrs', 'zzz'] (did you mean "
                          "'collection' for 'colection', 'filters' for 'filtrs'?); known keys are "), two


def test_a_filter_no_known_instrument_has_is_said_with_the_nearest_known_name_and_searched_even_so():
    wl = parse_watchlist("entries:\n  - {name: slip, target: M1, filters: [F200W, F44W, 'F150W2;F16M']}\n"
                         "  - {name: known, target: M1, filters: [f444w, V, SDSS g, Ks, CLEAR, 'F4*', FUV, F160W]}\n"
                         "  - {name: new, target: M1, filters: [QQQ]}\n", "mine.yaml")
    slip, known, new = wl.entries
    assert slip.criteria["filters"] == ["F200W", "F44W", "F150W2;F16M"]  # searched as written
    assert unknown_filters(slip) == ["filter 'F44W' is none skyassets knows (did you mean F444W?)",
                                     "filter 'F16M' is none skyassets knows (did you mean F162M?)"]
    assert unknown_filters(known) == [] and unknown_filters(new) == ["filter 'QQQ' is none skyassets knows"]
    assert wl.doubts()[0] == "mine.yaml: entry 'slip': filter 'F44W' is none skyassets knows (did you mean F444W?)"
    assert load_watchlist().doubts() == []


def test_missing_file_is_named(tmp_path):
    with pytest.raises(WatchlistError, match="nope.yaml"):
        load_watchlist(tmp_path / "nope.yaml")


def test_a_yaml_mistake_is_one_line_with_its_line_and_column(tmp_path):
    watchlist = tmp_path / "mine.yaml"
    watchlist.write_text("entries:\n  - name: ring\n    target: NGC 3132\n    radius: 3 arcmin\n"
                         "   filters: [F090W]\n")  # one blank short: no longer a key of the entry
    with pytest.raises(WatchlistError) as err:
        load_watchlist(watchlist)
    assert str(err.value) == (f"{watchlist}: line 5, column 4: not valid YAML: expected <block end>, but found "
                              "'<block mapping start>' (while parsing a block collection)")
    watchlist.write_bytes(b"entries:\n  - target: M\xe9\n")  # Latin-1, not UTF-8
    with pytest.raises(WatchlistError, match=r"mine.yaml: not a text file \(byte 22 is not UTF-8\)"):
        load_watchlist(watchlist)


def test_product_choice_defaults_to_what_mast_recommends():
    assert ProductSpec() == ProductSpec(product_type=("SCIENCE",), subgroups=(), extensions=(".fits", ".fits.gz"),
                                        calib_level=(2, 3), recommended=True)
    assert {e.products for e in load_watchlist().entries} == {ProductSpec()}
    wl = parse_watchlist("entries: [{target: M1, products: {recommended: false, calib_level: 3, extensions: fits}}]")
    assert wl.entries[0].products == ProductSpec(calib_level=(3,), recommended=False, extensions=(".fits",))
    with pytest.raises(WatchlistError, match="'recommended' is true or false"):
        parse_watchlist("entries: [{target: M1, products: {recommended: maybe}}]")


@pytest.mark.parametrize("written", ["02107", '"02107"', "jw02107", "2107", "JW02107"])
def test_a_jwst_program_written_with_its_leading_zeros_is_that_program(written):
    """YAML 1.1 reads 02107 as octal (1095): a program id keeps the digits written, without the
    zeros MAST's proposal_id leaves out."""
    (entry,) = parse_watchlist(f"entries: [{{program: {written}}}]").entries
    assert entry.program == ("2107",)


def test_numbers_other_than_ids_keep_their_yaml_meaning():
    (entry,) = parse_watchlist("entries: [{name: m74, target: M74, radius: 0.1 deg, calib_level: [2, 3]}]").entries
    assert entry.radius.deg == 0.1 and entry.criteria["calib_level"] == [2, 3]


def test_an_entry_that_cannot_be_read_goes_by_the_name_it_had_and_the_watchlist_keeps_its_defaults():
    wl = parse_watchlist("defaults: {products: {calib_level: [3]}}\n"
                         "entries: [{target: M31, radius: 99 deg}, {name: b, target: M1}, {name: c, program: [1, 2],"
                         " colection: x}, {target: M1, program: 3}]")
    assert [e.name for e in wl.entries] == ["b"]
    # as it would have been named: its rows from before are kept under that name
    assert [name for name, _ in wl.invalid] == ["target:M31", "c", "entry 4"]
    assert wl.defaults.calib_level == (3,)  # the product choice of rows no entry read now found
