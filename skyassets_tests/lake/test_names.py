import pytest

from skyassets.lake.names import InvalidNameError, safe_filename, validate_obs_id


@pytest.mark.parametrize("key", ["jw02736-o001_t001_nircam_clear-f090w", "j8pu01abq", "U27XCS01T", "a.b-c_d"])
def test_valid_observation_ids(key):
    assert validate_obs_id(key) == key


@pytest.mark.parametrize(
    "key", ["", "../etc", "a/b", "a b", "-leading", ".hidden", "a..b", "x" * 129, "ü", "a\x00", "C:x"]
)
def test_invalid_observation_ids_are_refused_with_the_key_named(key):
    with pytest.raises(InvalidNameError) as err:
        validate_obs_id(key)
    assert "observation id" in str(err.value)


@pytest.mark.parametrize(
    "name", ["../x.fits", "a/b.fits", "a\\b.fits", "..", ".", "C:evil.fits", "x\x00.fits", "tab\t.fits", "", "é" * 200]
)
def test_unsafe_filenames_are_refused(name):
    with pytest.raises(InvalidNameError):
        safe_filename(name)


def test_ordinary_product_names_pass():
    assert safe_filename("jw02736001001_02101_00001_nrcb1_cal.fits") == "jw02736001001_02101_00001_nrcb1_cal.fits"
