"""The local home's folder layout: files that replace a set together."""

import pytest

from skyassets.lake.home import Home


def test_files_replacing_a_folder_go_in_together_or_not_at_all(tmp_path):
    home = Home(tmp_path / "home")
    folder = home.target_dir("M-16")
    with home.replacing("products/M-16") as staging:
        for band in ("f090w", "f444w"):
            (staging / f"mosaic_{band}.fits").write_text(f"{band} first")
    assert sorted(p.name for p in folder.iterdir()) == ["mosaic_f090w.fits", "mosaic_f444w.fits"]

    with pytest.raises(RuntimeError), home.replacing("products/M-16") as staging:
        (staging / "mosaic_f090w.fits").write_text("f090w second")
        raise RuntimeError("F444W could not be made")
    assert (folder / "mosaic_f090w.fits").read_text() == "f090w first"
    assert sorted(p.name for p in folder.iterdir()) == ["mosaic_f090w.fits", "mosaic_f444w.fits"]

    with home.replacing("products/M-16") as staging:
        (staging / "mosaic_f090w.fits").write_text("f090w third")
    assert (folder / "mosaic_f090w.fits").read_text() == "f090w third"
    assert (folder / "mosaic_f444w.fits").read_text() == "f444w first"  # not remade: kept
    assert sorted(p.name for p in folder.iterdir()) == ["mosaic_f090w.fits", "mosaic_f444w.fits"]


def test_a_folder_to_replace_must_lie_inside_the_home(tmp_path):
    home = Home(tmp_path / "home")
    with pytest.raises(ValueError, match="not a relative path inside"), home.replacing("../elsewhere"):
        pass
    assert not (tmp_path / "elsewhere").exists()
