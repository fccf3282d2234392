"""``skyassets``' public names resolve to the functions their owners define, and importing the
package alone stays light."""

import subprocess
import sys

import pytest

import skyassets


@pytest.mark.parametrize("name", skyassets.__all__)
def test_every_public_name_resolves(name):
    value = getattr(skyassets, name)
    assert value.__name__ == name and value.__module__.startswith("skyassets.")


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_thing"):
        skyassets.no_such_thing  # noqa: B018


def test_importing_the_package_loads_no_science_stack():
    code = "import sys, skyassets; print(sorted(m for m in ('astropy', 'dagster', 'duckdb') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_dir_lists_the_public_names_not_the_helpers_of_the_package():
    listed = set(dir(skyassets))
    assert set(skyassets.__all__) <= listed
    assert not listed & {"Any", "annotations", "import_module"} and not any(n.startswith("_") for n in listed)
