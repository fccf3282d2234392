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


def test_what_describes_the_old_set_goes_before_any_file_is_moved_and_only_then(tmp_path):
    home = Home(tmp_path / "home")
    folder = home.target_dir("M-16")
    with home.replacing("products/M-16") as staging:
        (staging / "mosaic_f090w.fits").write_text("first")
    seen: list[str] = []

    def first() -> None:  # the rows of the old set removed: the files are still the old ones
        seen.append((folder / "mosaic_f090w.fits").read_text())

    with home.replacing("products/M-16", first=first):
        pass  # nothing made (every band as before): nothing to describe anew
    with pytest.raises(RuntimeError), home.replacing("products/M-16", first=first) as staging:
        (staging / "mosaic_f090w.fits").write_text("second")
        raise RuntimeError("F444W could not be made")
    assert seen == []
    with home.replacing("products/M-16", first=first) as staging:
        (staging / "mosaic_f090w.fits").write_text("third")
    assert seen == ["first"] and (folder / "mosaic_f090w.fits").read_text() == "third"


def test_a_private_folder_left_by_a_killed_run_is_removed_once_a_day_old(tmp_path):
    import os
    import time

    home = Home(tmp_path / "home")
    folder = home.target_dir("M-16")
    old, young = folder / ".replacing-killed", folder / ".replacing-running"
    for left in (old, young):
        left.mkdir(parents=True)
        (left / "mosaic_f090w.fits").write_bytes(b"\0" * 2880)
    day_ago = time.time() - 86400 - 60
    os.utime(old, (day_ago, day_ago))
    with home.replacing("products/M-16"):
        pass
    assert not old.exists() and young.exists()  # another run's, still being made
