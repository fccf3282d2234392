"""Bad input against the real landing path: what is lost, what is wrongly accepted, what crashes or hangs.

    python bench/hardening.py                 # the whole corpus (about 1.2 GB on disk, mostly sparse)
    python bench/hardening.py --small         # smaller junk and bombs, same cases

Builds, in a temporary folder, the bad-input corpus skyassets must survive beside good files:
FITS-looking junk without an END card (a sparse file), random bytes, an empty file, a zip archive,
a gzip bomb (2 MB inflating to 2 GiB) and a gzip stream without END, files cut in their header or
data, BITPIX 7, an image header announcing more pixels than ``SKYASSETS_MAX_IMAGE_PIXELS`` (sparse),
zero and singular CD matrices and a NaN CRVAL, bytes that are not ASCII in header cards, odd
TARGNAMEs (``A..B``, a leading ``+``, 68 characters), a name that is not UTF-8, a 250-byte name,
and links from the landing folder to ``/etc/passwd`` and to a good file outside it. Then:

  tick    ``landing_zone_sensor`` evaluated over the folder (three ticks: a file is taken once it has
          stopped changing between two), in a process of its own: seconds per tick and peak memory;
  ingest  ``skyassets.cli.runs.ingest`` and ``bring_up_to_date`` (what ``skyassets ingest`` runs:
          landing runs, quality, targets, products, the catalog), in a process of its own with a
          deadline: peak memory, and per file whether it was catalogued or quarantined, and why.

A case is judged by what should become of it. Good files (the odd names and odd TARGNAMEs
included) must be catalogued: one that is not is *lost* (one refused with a reason is listed apart
from one that vanished). Bad files must be refused with a reason: one catalogued is *wrongly
accepted*, and so is an image with a broken WCS catalogued with a position (or found by a cone
search), an oversized image measured rather than refused, or anything outside the landing folder
reaching the store or the quarantine. A process that raises, dies or passes its deadline is a
*crash or hang*. Prints each case's outcome and the totals (targets: 0 lost, 0 wrongly accepted,
0 crashes or hangs).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

DEADLINE = 1800.0  # seconds an ingest of the corpus may take before it counts as a hang
TICK_LIMIT = 5.0  # seconds a sensor tick may take
PASSWD = Path("/etc/passwd")
SMALL_DECOMPRESSED_LIMIT = 64 << 20  # with --small, for the 256 MiB bomb


@dataclass(frozen=True)
class Case:
    name: str  # file name in the landing folder (bytes for a name that is not UTF-8)
    expect: str  # "catalogued", "refused", "no position" (catalogued, flagged), "not measured", "outside"
    why: str
    obs: str | None = None  # the OBS_ID in its header, to find it if it is catalogued under another name


# ------------------------------------------------------------------------------------ corpus
def _image(shape: tuple[int, int] = (128, 128), seed: int = 0, **cards) -> bytes:
    import numpy as np
    from astropy.io import fits

    rng = np.random.default_rng(seed)
    data = rng.normal(100.0, 5.0, shape).astype("f4")
    header = fits.Header()
    header.update({"TELESCOP": "JWST", "INSTRUME": "NIRCAM", "FILTER": "F200W", "EXPTIME": 100.0,
                   "BUNIT": "MJy/sr", "TARGNAME": "NGC 3132", "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN",
                   "CRPIX1": shape[1] / 2, "CRPIX2": shape[0] / 2, "CRVAL1": 151.7573 + seed * 0.01,
                   "CRVAL2": -40.4364, "CD1_1": -1.7e-5, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 1.7e-5,
                   "OBS_ID": f"hard-good-{seed:03d}"})
    header.update(cards)
    buffer = io.BytesIO()
    fits.PrimaryHDU(data, header=header).writeto(buffer)
    return buffer.getvalue()


def _card(raw: bytes, key: str, card: bytes) -> bytes:
    at = raw.index(key.ljust(8).encode() + b"= ")
    return raw[:at] + card.ljust(80) + raw[at + 80:]


def zeros_gzip(size: int, start: bytes = b"") -> bytes:
    """A valid gzip file of ``start`` then zeros up to ``size`` bytes (2 GiB in about 2 MB), made in
    seconds: one fully flushed deflate block of 16 MiB of zeros repeated."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = 16 << 20
    body = [packer.compress(start) + packer.flush(zlib.Z_FULL_FLUSH)]
    block = packer.compress(bytes(chunk)) + packer.flush(zlib.Z_FULL_FLUSH)
    whole, rest = divmod(size - len(start), chunk)
    body += [block] * whole + [packer.compress(bytes(rest)) + packer.flush()]
    crc = zlib.crc32(start)
    for _ in range(whole):
        crc = zlib.crc32(bytes(chunk), crc)
    crc = zlib.crc32(bytes(rest), crc)
    trailer = crc.to_bytes(4, "little") + (size % (1 << 32)).to_bytes(4, "little")
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + b"".join(body) + trailer


def _sparse(path: Path, head: bytes, size: int) -> None:
    with path.open("wb") as f:
        f.write(head)
        f.truncate(size)


def build_corpus(zone: Path, outside: Path, small: bool, baseline: Path) -> list[Case]:
    """Write the corpus into ``zone`` (the landing folder) and ``outside``, and its good images alone
    into ``baseline``; return its cases."""
    from astropy.io import fits

    for folder in (zone, outside, baseline):
        folder.mkdir(parents=True)
    cases: list[Case] = []

    def put(name: str | bytes, data: bytes, expect: str, why: str) -> None:
        target = os.path.join(os.fsencode(zone), name if isinstance(name, bytes) else name.encode())
        with open(target, "wb") as f:
            f.write(data)
        at = data.find(b"OBS_ID  = 'hard-", 0, 4 * 2880)
        obs = data[at + 11: data.index(b"'", at + 11)].decode() if at >= 0 else None
        cases.append(Case(os.fsdecode(name) if isinstance(name, bytes) else name, expect, why, obs))

    for seed in range(6):
        put(f"good_{seed}.fits", _image(seed=seed), "catalogued", "a good image")
        (baseline / f"good_{seed}.fits").write_bytes(_image(seed=seed))
    put("good_gz.fits.gz", gzip.compress(_image(seed=6)), "catalogued", "a good gzip image")
    # names
    put(b"caf\xe9_\xff.fits", _image(seed=8), "catalogued", "a good image under a name that is not UTF-8")
    put("n" * 245 + ".fits", _image(seed=9), "catalogued", "a good image under a 250-byte name")
    # TARGNAMEs
    for i, name in enumerate(("A..B", "+5 GRB", "T" * 68, "..", "NGC 3132/../x")):
        put(f"targname_{i}.fits", _image(seed=20 + i, TARGNAME=name), "catalogued", f"TARGNAME {name[:20]!r}")
    # header bytes
    put("nonascii_value.fits", _card(_image(seed=30), "EXPTIME", b"EXPTIME =              100.0\xff"),
        "catalogued", "a byte that is not ASCII in a number")
    put("nonascii_string.fits", _card(_image(seed=31), "TARGNAME", b"TARGNAME= 'NGC 3132 caf\xe9'"),
        "catalogued", "a byte that is not ASCII in a string")
    # positions
    put("wcs_zero_cd.fits", _image(seed=40, CD1_1=0.0, CD2_2=0.0), "no position", "a zero CD matrix")
    put("wcs_singular_cd.fits", _image(seed=41, CD1_1=1e-5, CD1_2=1e-5, CD2_1=1e-5, CD2_2=1e-5), "no position",
        "a singular CD matrix")
    put("wcs_nan_crval.fits", _card(_image(seed=42), "CRVAL1", b"CRVAL1  =                  NaN"), "no position",
        "a NaN CRVAL")
    # structure
    put("bitpix7.fits", _image(seed=7).replace(b"BITPIX  =                  -32", b"BITPIX  =                    7"),
        "refused", "BITPIX 7")
    put("truncated_data.fits", _image(seed=10)[:6000], "refused", "cut inside its data")
    put("truncated_header.fits", _image(seed=11)[:1000], "refused", "cut inside its header")
    put("empty.fits", b"", "refused", "0 bytes")
    put("text.fits", b"this is not a FITS file\n" * 100, "refused", "text")
    put("random.fits", os.urandom(4 << 20), "refused", "random bytes")
    put("archive.fits", b"PK\x03\x04" + os.urandom(4000), "refused", "a zip archive")
    junk_size = (64 if small else 512) << 20
    _sparse(zone / "junk_no_end.fits", b"SIMPLE  =                    T".ljust(80), junk_size)
    cases.append(Case("junk_no_end.fits", "refused", f"{junk_size >> 20} MiB without an END card (sparse)"))
    # a header that announces exactly the zeros that follow, so only the inflated size is wrong
    rows = (8 if small else 64) << 10
    bomb_header = fits.Header([("SIMPLE", True), ("BITPIX", 8), ("NAXIS", 2), ("NAXIS1", 32768), ("NAXIS2", rows)])
    bomb_size = 2880 + 32768 * rows + (-32768 * rows) % 2880
    put("bomb.fits.gz", zeros_gzip(bomb_size, bomb_header.tostring().encode("ascii")), "refused",
        f"gzip of {bomb_size >> 20} MiB, a valid header and zeros")
    put("endless.fits.gz", gzip.compress(b"SIMPLE  =                    T".ljust(80) + b" " * (64 << 20), 1),
        "refused", "gzip stream of a header without END")
    header = fits.Header([("SIMPLE", True), ("BITPIX", 16), ("NAXIS", 2), ("NAXIS1", 17000), ("NAXIS2", 17000)])
    head = header.tostring().encode("ascii")
    _sparse(zone / "giant_sparse.fits", head, len(head) + 17000 * 17000 * 2 + (-17000 * 17000 * 2) % 2880)
    cases.append(Case("giant_sparse.fits", "not measured", "17000 x 17000 pixels, over the pixel limit (sparse)"))
    # links out of the zone
    os.symlink(PASSWD, zone / "passwd.fits")
    cases.append(Case("passwd.fits", "outside", "a link to /etc/passwd"))
    (outside / "elsewhere.fits").write_bytes(_image(seed=60))
    os.symlink(outside / "elsewhere.fits", zone / "elsewhere.fits")
    cases.append(Case("elsewhere.fits", "outside", "a link to a good file outside the landing folder"))
    return cases


# -------------------------------------------------------------------------------- the workers
def _peak_mb() -> float:
    """This process's peak resident memory (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def tick_worker(zone: str, home_root: str) -> dict:
    """Three landing sensor ticks over ``zone``, as the daemon evaluates them."""
    from dagster import DagsterInstance, build_sensor_context

    from skyassets.cli.commands import prepare_dagster_home
    from skyassets.definitions import defs
    from skyassets.defs.landing.sensors import landing_zone_sensor
    from skyassets.lake.home import Home

    home = Home(Path(home_root))
    prepare_dagster_home(home)
    resources = dict(defs.resources)
    landing = resources["landing"]
    resources["landing"] = type(landing)(**{**landing.model_dump(), "folder": zone})
    before = _peak_mb()
    seconds, requested, cursor = [], 0, None
    with DagsterInstance.get() as instance:
        for _ in range(3):
            started = time.perf_counter()
            result = landing_zone_sensor(build_sensor_context(instance=instance, cursor=cursor, resources=resources))
            seconds.append(time.perf_counter() - started)
            cursor = result.cursor
            requested += len(result.run_requests or [])
            for request in result.dynamic_partitions_requests or []:
                known = set(instance.get_dynamic_partitions(request.partitions_def_name))
                instance.add_dynamic_partitions(
                    request.partitions_def_name, [k for k in request.partition_keys if k not in known])
    return {"seconds": seconds, "runs": requested, "peak_mb": _peak_mb(), "peak_before_mb": before}


def ingest_worker(zone: str, home_root: str) -> dict:
    """``skyassets ingest`` of ``zone`` through the Python API, runs in this process."""
    from dagster import DagsterInstance

    from skyassets.cli.commands import prepare_dagster_home
    from skyassets.cli.runs import QUIET, as_runner, bring_up_to_date, ingest
    from skyassets.lake.home import Home

    home = Home(Path(home_root))
    prepare_dagster_home(home)
    before = _peak_mb()
    with DagsterInstance.get() as instance:
        runner = as_runner(instance)
        started = time.perf_counter()
        report = ingest([zone], home, runner)
        ready = [p for p in report.partitions if home.tables.exists("image_metadata", p)]
        run_config = {**QUIET, "resources": {"home": {"config": {"root": str(home.root)}}}}
        downstream = bring_up_to_date(runner, home, ready, run_config)
        seconds = time.perf_counter() - started
    return {
        "catalogued": report.catalogued, "quarantined": report.quarantined, "failed": report.failed,
        "refused": report.refused, "failed_runs": report.failed_runs, "downstream": downstream, "seconds": seconds,
        "peak_mb": _peak_mb(), "peak_before_mb": before,
    }


def _run_worker(kind: str, zone: Path, home: Path, deadline: float, small: bool) -> tuple[dict | None, str | None]:
    """(the worker's figures, None) or (None, why it crashed or hung). ``small``: the decompression
    limit scaled down with the corpus' bomb, so that it is still one."""
    out = home.parent / f"{home.name}.json"
    command = [sys.executable, __file__, f"--{kind}-worker", str(zone), str(home), str(out)]
    env = {**os.environ, "SKYASSETS_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    if small:
        env["SKYASSETS_MAX_DECOMPRESSED_BYTES"] = str(SMALL_DECOMPRESSED_LIMIT)
    try:
        done = subprocess.run(command, env=env, timeout=deadline, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        return None, f"{kind}: no answer after {deadline:.0f} s (hang)"
    if done.returncode != 0 or not out.exists():
        tail = (done.stderr or "").strip().splitlines()[-3:]
        return None, f"{kind}: exit status {done.returncode}: {' | '.join(tail)}"
    return json.loads(out.read_text()), None


# ------------------------------------------------------------------------------------ judging
def _lake_rows(home: Path) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """Catalogue rows and quality rows by the landed file's name."""
    import pyarrow.parquet as pq

    def rows(folder: Path) -> list[dict]:
        return [r for f in sorted(folder.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]

    images: dict[str, list[dict]] = {}
    for row in rows(home / "lake" / "image_metadata"):
        images.setdefault(row.get("file_name") or "", []).append(row)
    quality: dict[str, list[dict]] = {}
    for row in rows(home / "lake" / "image_quality"):
        quality.setdefault(row.get("file_name") or "", []).append(row)
    return images, quality


def _found_by_cone(home: Path, rows: list[dict]) -> bool:
    from skyassets.catalog import connect, search

    con = connect(home)
    try:
        return any(
            r.get("s_ra") is not None and r.get("s_dec") is not None
            and r["sha256"] in set(search(con, cone=(r["s_ra"], r["s_dec"], 0.01)).df()["sha256"])
            for r in rows
        )
    finally:
        con.close()


def _outside_content_inside(home: Path, outside: Path) -> list[str]:
    """Files in the store or the quarantine whose bytes are /etc/passwd's or the outside file's."""
    wanted = {PASSWD.read_bytes(), (outside / "elsewhere.fits").read_bytes()}
    sizes = {len(w) for w in wanted}
    found = []
    for folder in (home / "files", home / "quarantine"):
        for path in folder.rglob("*") if folder.is_dir() else []:
            regular = path.is_file() and not path.is_symlink()
            if regular and path.stat().st_size in sizes and path.read_bytes() in wanted:
                found.append(str(path.relative_to(home)))
    return found


def _quarantined(home: Path) -> dict[str, str]:
    """The reason of each quarantined file, by the name it landed under (from the notes beside them)."""
    notes: dict[str, str] = {}
    for note in sorted((home / "quarantine").glob("*.json")):
        try:
            content = json.loads(note.read_text())
        except (OSError, ValueError):
            continue
        name = os.path.basename(str(content.get("original_path", ""))).removesuffix(".corrupt")
        notes[name] = str(content.get("reason", ""))
    return notes


def judge(cases: list[Case], zone: Path, outside: Path, home: Path, ingested: dict | None) -> dict[str, list[str]]:
    """Each case's outcome: ok, lost, refused good (a good file refused with a reason), wrong, and
    unsummarised (refused with a reason in the quarantine, but missing from ingest's summary)."""
    outcome: dict[str, list[str]] = {"ok": [], "lost": [], "refused good": [], "wrong": [], "unsummarised": []}
    images, quality = _lake_rows(home)
    reported: dict[str, str] = {}
    if ingested:
        for what in ("quarantined", "failed", "refused"):
            for location, reason in ingested.get(what, {}).items():
                reported[os.path.basename(location)] = f"{what}: {reason}"
    notes = _quarantined(home)
    leaked = _outside_content_inside(home, outside)
    for case in cases:
        # a file may be catalogued under a safe name: look for its OBS_ID too
        rows = images.get(case.name) or [
            r for rs in images.values() for r in rs if case.obs and case.obs in str(r.get("obs_id"))
        ]
        # a name that is not UTF-8 is reported with its bytes escaped, as it can be printed
        reason = reported.get(case.name) or reported.get(os.fsencode(case.name).decode("utf-8", "backslashreplace"), "")
        line = f"{case.name[:40]:<40} {case.why}: "
        if not reason and case.name in notes:
            reason = f"quarantined: {notes[case.name]}"
            outcome["unsummarised"].append(line + "in the quarantine, not in ingest's summary")
        if case.expect == "catalogued":
            if rows:
                outcome["ok"].append(line + "catalogued")
            elif reason:
                outcome["refused good"].append(line + reason[:160])
            else:
                outcome["lost"].append(line + "neither catalogued nor reported")
        elif case.expect == "no position":
            bad = [r for r in rows if r.get("wcs_problem") is None or r.get("s_ra") is not None]
            if bad or (rows and _found_by_cone(home, rows)):
                outcome["wrong"].append(line + "catalogued with a position")
            elif rows:
                outcome["ok"].append(line + f"catalogued without a position: {rows[0]['wcs_problem'][:100]}")
            else:
                outcome["lost"].append(line + (reason or "neither catalogued nor reported"))
        elif case.expect == "not measured":
            measured = [q for q in quality.get(case.name, []) if q.get("usable")]
            if measured:
                outcome["wrong"].append(line + "measured")
            elif rows or reason:
                problem = next((q.get("problem") for q in quality.get(case.name, [])), None) or reason
                outcome["ok"].append(line + f"not measured: {str(problem)[:120]}")
            else:
                outcome["lost"].append(line + "neither catalogued nor reported")
        elif case.expect == "outside":
            if rows or leaked:
                outcome["wrong"].append(line + f"taken in ({', '.join(leaked) or 'catalogued'})")
            else:
                outcome["ok"].append(line + (f"refused: {reason[:120]}" if reason else "not taken"))
        else:
            if rows:
                outcome["wrong"].append(line + "catalogued")
            elif reason:
                outcome["ok"].append(line + reason[:140])
            else:
                outcome["lost"].append(line + "neither catalogued nor reported")
    return outcome


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true",
                        help="64 MiB junk, a 256 MiB bomb against a 64 MiB decompression limit: a quicker look")
    parser.add_argument("--workdir", default=None, help="where the temporary folder goes (default: the system's)")
    parser.add_argument("--deadline", type=float, default=DEADLINE, help="seconds before an ingest counts as hung")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and say where it is")
    parser.add_argument("--tick-worker", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--ingest-worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    for kind, worker in (("tick_worker", tick_worker), ("ingest_worker", ingest_worker)):
        if getattr(args, kind):
            zone, home, out = getattr(args, kind)
            import warnings

            warnings.simplefilter("ignore")
            Path(out).write_text(json.dumps(worker(zone, home)))
            return 0

    work = Path(tempfile.mkdtemp(prefix="skyassets-hardening-", dir=args.workdir))
    try:
        zone, outside, baseline = work / "landing", work / "outside", work / "good"
        cases = build_corpus(zone, outside, args.small, baseline)
        print(f"corpus: {len(cases)} cases in {zone}")
        crashes: list[str] = []
        # the baseline: the same processes over the good images alone, interleaved with the corpus
        base_ticked, _ = _run_worker("tick", baseline, work / "base-tick-home", 300, args.small)
        ticked, problem = _run_worker("tick", zone, work / "tick-home", 300, args.small)
        if problem:
            crashes.append(problem)
        base_ingested, _ = _run_worker("ingest", baseline, work / "base-home", args.deadline, args.small)
        ingested, problem = _run_worker("ingest", zone, work / "home", args.deadline, args.small)
        if problem:
            crashes.append(problem)
        elif ingested["downstream"] is None or ingested["downstream"] or ingested["failed_runs"]:
            crashes.append(f"ingest: {len(ingested['failed_runs'])} landing runs failed, downstream "
                           f"{'catalog not published' if ingested['downstream'] is None else ingested['downstream']}"
                           " runs failed")
        outcome = judge(cases, zone, outside, work / "home", ingested)
        for what in ("ok", "refused good", "lost", "wrong", "unsummarised"):
            for line in outcome[what]:
                print(f"  {what:<12} {line}")
        for line in crashes:
            print(f"  crash/hang   {line}")
        print(f"cases tried          : {len(cases)}")
        print(f"files lost           : {len(outcome['lost'])} (target 0); good files refused with a reason: "
              f"{len(outcome['refused good'])}")
        print(f"wrong files accepted : {len(outcome['wrong'])} (target 0)")
        print(f"refused, not in the ingest summary: {len(outcome['unsummarised'])}")
        print(f"crashes or hangs     : {len(crashes)} (target 0)")
        for what, figures, base in (("sensor ticks", ticked, base_ticked), ("ingest", ingested, base_ingested)):
            if not figures:
                continue
            seconds = figures["seconds"] if isinstance(figures["seconds"], list) else [figures["seconds"]]
            line = (f"{what:<21}: {', '.join(f'{t:.2f}' for t in seconds)} s, peak memory {figures['peak_mb']:.0f} MB "
                    f"({figures['peak_mb'] - figures['peak_before_mb']:.0f} MB over its imports)")
            if base:
                base_seconds = base["seconds"] if isinstance(base["seconds"], list) else [base["seconds"]]
                line += (f"; good files alone {', '.join(f'{t:.2f}' for t in base_seconds)} s, "
                         f"{base['peak_mb']:.0f} MB: x{max(seconds) / max(base_seconds):.2f} time, "
                         f"x{figures['peak_mb'] / base['peak_mb']:.2f} memory")
            print(line)
        if ticked:
            print(f"slowest tick         : {max(ticked['seconds']):.2f} s (target <= {TICK_LIMIT:.0f} s)")
        return 0 if not (outcome["lost"] or outcome["wrong"] or crashes) else 1
    finally:
        if args.keep:
            print(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
