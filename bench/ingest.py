"""Ingest throughput: local JWST-like files catalogued through Dagster against a bare astropy loop.

    python bench/ingest.py                  # 2,000 files
    python bench/ingest.py --files 200      # quick look
    python bench/ingest.py --postgres       # also on a PostgreSQL instance: events/s and files/s side by side
    DAGSTER_EVENT_BATCH_SIZE=0 python bench/ingest.py --postgres  # each event alone (default: batches of 1,000)

Generates JWST-like ``_cal`` files (a primary header of ~280 cards, a SCI extension with a TAN-SIP
WCS and an S_REGION as the pipeline writes it, ERR and DQ extensions, CHECKSUM/DATASUM; 64x64
pixels so the figures are about headers and the pipeline, not pixels), then times in one run:
  bare       for each file, astropy reads the primary and SCI headers and computes the WCS
             footprint (``WCS(header).calc_footprint()``), in one process;
  skyassets  ``skyassets.runs.ingest`` with a real ``DagsterInstance`` (``DagsterInstance.from_config``
             on a temporary ``DAGSTER_HOME`` with SQLite storage): partitions added, runs recorded,
             files copied and verified, Parquet written; then ``catalog_job`` publishes the catalog.
Prints files/s of both, the ratio (target: skyassets >= 50% of bare) and where the skyassets time
goes. As in real JWST headers, the files of one exposure (its ten NIRCam detectors) share an
OBS_ID, so a partition; ``--per-observation 1`` makes every file its own partition, the worst
case for Dagster's per-partition events; ``--no-s-region`` leaves S_REGION out, so extraction
computes every footprint from the WCS. The search index that ``catalog_job`` keeps is lexical, as
without the ``embeddings`` extra (``SKYASSETS_EMBEDDING_MODEL=none``); ``--embeddings`` embeds
every document as well, as an installation with the extra does.
Everything lives in one temporary folder (in /dev/shm by default), removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from skyassets.fits.verify import ones_complement_sum, verify_fits

TARGET = 0.5
# Dagster's settings for how events are stored, read from the environment of every process that runs a run;
# the skyassets commands (``prepare_dagster_home``, which this bench calls) and deploy/ set the first.
EVENT_SETTINGS = ("DAGSTER_EVENT_BATCH_SIZE", "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS")
SIDE = 64
_CHECKSUM_EXCLUDE = frozenset(b":;<=>?@[\\]^_`")


# ------------------------------------------------------------------------------------ files
def _primary_header() -> fits.Header:
    """A primary header shaped like a JWST NIRCam ``_cal`` file's (~280 cards)."""
    h = fits.Header()
    cards: list[tuple[str, Any, str]] = [
        ("DATE", "2024-07-01T12:00:00.000", "UTC date file created"),
        ("ORIGIN", "STSCI", "Organization responsible for creating file"),
        ("TIMESYS", "UTC", "principal time system for time-related keywords"),
        ("TIMEUNIT", "s", "Default unit applicable to all time values"),
        ("FILENAME", "jw02736001001_02105_00001_nrca1_cal.fits", "Name of the file"),
        ("SDP_VER", "2024_2", "Data processing software version number"),
        ("PRD_VER", "PRDOPSSOC-067", "S&OC PRD version number used in data processing"),
        ("OSS_VER", "8.4.6", "Observatory Scheduling Software (OSS) version number"),
        ("GSC_VER", "GSC30", "Guide star catalog version number"),
        ("CAL_VER", "1.14.0", "Calibration software version number"),
        ("CAL_VCS", "RELEASE", "Calibration software version control sys number"),
        ("DATAMODL", "ImageModel", "Type of data model"),
        ("TELESCOP", "JWST", "Telescope used to acquire the data"),
        ("HGA_MOVE", False, "High Gain Antenna moved during data collection"),
        ("PWFSEET", 59751.2, "Previous WFS exposure end time (MJD UTC)"),
        ("NWFSEST", 59752.9, "Next WFS exposure start time (MJD UTC)"),
        ("TITLE", "Early Release Observations of the Southern Ring Nebula", "Proposal title"),
        ("PI_NAME", "Pontoppidan, Klaus", "Principal investigator name"),
        ("CATEGORY", "ERO", "Program category"),
        ("SUBCAT", "", "Program sub-category"),
        ("SCICAT", "Stellar Physics", "Science category assigned by TAC"),
        ("CONT_ID", 0, "Continuation of the specified previous program"),
        ("DATE-OBS", "2022-06-03", "[yyyy-mm-dd] UTC date at start of exposure"),
        ("TIME-OBS", "12:01:39.604", "[hh:mm:ss.sss] UTC time at start of exposure"),
        ("DATE-BEG", "2022-06-03T12:01:39.604", "Date-time start of exposure"),
        ("DATE-END", "2022-06-03T12:05:28.309", "Date-time end of exposure"),
        ("OBS_ID", "V02736001001P0000000002105", "Programmatic observation identifier"),
        ("VISIT_ID", "02736001001", "Visit identifier"),
        ("PROGRAM", "02736", "Program number"),
        ("OBSERVTN", "001", "Observation number"),
        ("VISIT", "001", "Visit number"),
        ("VISITGRP", "02", "Visit group identifier"),
        ("SEQ_ID", "1", "Parallel sequence identifier"),
        ("ACT_ID", "05", "Activity identifier"),
        ("EXPOSURE", "1", "Exposure request number"),
        ("BKGDTARG", False, "Background target"),
        ("TEMPLATE", "NIRCam Imaging", "Observation template used"),
        ("OBSLABEL", "NIRCam Imaging", "Proposer label for the observation"),
        ("VISITYPE", "PRIME_TARGETED_FIXED", "Visit type"),
        ("VSTSTART", "2022-06-03 11:40:14.7130000", "UTC visit start time"),
        ("NEXPOSUR", 8, "Total number of planned exposures in visit"),
        ("INTARGET", False, "At least one exposure in visit is internal"),
        ("TARGOOPP", False, "Visit scheduled as target of opportunity"),
        ("TARGPROP", "NGC3132", "Proposer's name for the target"),
        ("TARGNAME", "NGC 3132", "Standard astronomical catalog name for target"),
        ("TARGTYPE", "FIXED", "Type of target (fixed, moving, generic)"),
        ("TARG_RA", 151.7578, "Target RA at mid time of exposure"),
        ("TARG_DEC", -40.4367, "Target Dec at mid time of exposure"),
        ("TARGURA", 0.0, "Target RA uncertainty"),
        ("TARGUDEC", 0.0, "Target Dec uncertainty"),
        ("MU_RA", 0.0, "Target proper motion in RA"),
        ("MU_DEC", 0.0, "Target proper motion in Dec"),
        ("MU_EPOCH", "2000-01-01 00:00:00", "Target proper motion epoch"),
        ("PROP_RA", 151.7578, "Proposer specified RA for the target"),
        ("PROP_DEC", -40.4367, "Proposer specified Dec for the target"),
        ("SRCTYAPT", "UNKNOWN", "Source type from APT"),
        ("INSTRUME", "NIRCAM", "Instrument used to acquire the data"),
        ("DETECTOR", "NRCA1", "Name of detector used to acquire the data"),
        ("MODULE", "A", "NIRCam module: A or B"),
        ("CHANNEL", "SHORT", "Instrument channel"),
        ("FILTER", "F187N", "Name of the filter element used"),
        ("PUPIL", "CLEAR", "Name of the pupil element used"),
        ("PILIN", False, "Pupil imaging lens in the optical path"),
        ("EXP_TYPE", "NRC_IMAGE", "Type of data in the exposure"),
        ("EXPSTART", 59733.50115282, "UTC exposure start time (MJD)"),
        ("EXPMID", 59733.50247624, "UTC exposure mid time (MJD)"),
        ("EXPEND", 59733.50379965, "UTC exposure end time (MJD)"),
        ("READPATT", "DEEP8", "Readout pattern"),
        ("NINTS", 1, "Number of integrations in exposure"),
        ("NGROUPS", 8, "Number of groups in integration"),
        ("NFRAMES", 8, "Number of frames per group"),
        ("GROUPGAP", 12, "Number of frames dropped between groups"),
        ("TSAMPLE", 10.0, "[us] Time between samples"),
        ("TFRAME", 10.737, "[s] Time between frames"),
        ("TGROUP", 214.74, "[s] Time between groups"),
        ("EFFINTTM", 1503.18, "[s] Effective integration time"),
        ("EFFEXPTM", 1503.18, "[s] Effective exposure time"),
        ("DURATION", 1717.92, "[s] Total duration of exposure"),
        ("NRSTSTRT", 1, "Number of resets at start of exposure"),
        ("NRESETS", 1, "Number of resets between integrations"),
        ("ZEROFRAM", False, "Zero frame was downlinked separately"),
        ("DATAPROB", False, "Science telemetry indicated a problem"),
        ("SCA_NUM", 481, "Sensor Chip Assembly number"),
        ("DATAMODE", 89, "post-processing method used in FPAP"),
        ("COMPRSSD", False, "data compressed on-board (T/F)"),
        ("SUBARRAY", "FULL", "Subarray used"),
        ("SUBSTRT1", 1, "Starting pixel in axis 1 direction"),
        ("SUBSTRT2", 1, "Starting pixel in axis 2 direction"),
        ("SUBSIZE1", 2048, "Number of pixels in axis 1 direction"),
        ("SUBSIZE2", 2048, "Number of pixels in axis 2 direction"),
        ("FASTAXIS", -1, "Fast readout axis direction"),
        ("SLOWAXIS", 2, "Slow readout axis direction"),
        ("PATTTYPE", "FULL", "Primary dither pattern type"),
        ("PRIDTPTS", 8, "Number of points in primary dither pattern"),
        ("PATT_NUM", 1, "Position number in primary pattern"),
        ("NUMDTHPT", 8, "Total number of points in pattern"),
        ("PATTSIZE", "MEDIUM", "Primary dither pattern size"),
        ("SUBPXTYP", "STANDARD", "Subpixel dither type"),
        ("SUBPXPTS", 1, "Number of points in subpixel dither pattern"),
        ("XOFFSET", 0.0, "X offset from pattern starting position"),
        ("YOFFSET", 0.0, "Y offset from pattern starting position"),
        ("DITHPNTS", "8", "Number of points in the dither pattern"),
        ("ENG_QUAL", "OK", "Engineering data quality indicator from EngDB"),
        ("VISITSTA", "SUCCESSFUL", "Status of a visit"),
        ("NDITHPTS", 8, "Number of dither points"),
        ("ASNPOOL", "jw02736_20220712t222014_pool", "Name of the ASN pool"),
        ("ASNTABLE", "jw02736-o001_20220712t222014_image2_00001_asn.json", "Name of ASN table"),
        ("CRDS_VER", "11.16.5", "Version of CRDS file selection software used"),
        ("CRDS_CTX", "jwst_1237.pmap", "CRDS context (.pmap) used to select ref files"),
        ("R_AREA", "crds://jwst_nircam_area_0016.fits", "Pixel area reference file information"),
        ("R_DARK", "crds://jwst_nircam_dark_0342.fits", "Dark reference file information"),
        ("R_DISTOR", "crds://jwst_nircam_distortion_0173.asdf", "Distortion reference file"),
        ("R_FILOFF", "crds://jwst_nircam_filteroffset_0004.asdf", "Filter offset reference file"),
        ("R_FLAT", "crds://jwst_nircam_flat_0412.fits", "Flat reference file information"),
        ("R_GAIN", "crds://jwst_nircam_gain_0097.fits", "Gain reference file information"),
        ("R_LINEAR", "crds://jwst_nircam_linearity_0052.fits", "Linearity reference file"),
        ("R_MASK", "crds://jwst_nircam_mask_0063.fits", "Mask reference file information"),
        ("R_PHOTOM", "crds://jwst_nircam_photom_0157.fits", "Photometric reference file"),
        ("R_READNO", "crds://jwst_nircam_readnoise_0042.fits", "Read noise reference file"),
        ("R_SATURA", "crds://jwst_nircam_saturation_0097.fits", "Saturation reference file"),
        ("R_SUPERB", "crds://jwst_nircam_superbias_0144.fits", "Superbias reference file"),
    ]
    steps = ["S_DQINIT", "S_SATURA", "S_SUPERB", "S_REFPIX", "S_LINEAR", "S_PERSIS", "S_DARK",
             "S_JUMP", "S_RAMP", "S_GANSCL", "S_GRPSCL", "S_GUICDS", "S_IPC", "S_ASSIGN",
             "S_FLAT", "S_PHOTOM", "S_RESAMP", "S_BKDSUB", "S_FRSTFR", "S_LASTFR", "S_RSCD",
             "S_DARKSB", "S_CHGMIG"]
    cards += [(s, "COMPLETE" if i % 3 else "SKIPPED", "Step status") for i, s in enumerate(steps)]
    pointing = ["RA_V1", "DEC_V1", "PA_V3", "RA_REF", "DEC_REF", "ROLL_REF", "V2_REF", "V3_REF",
                "VPARITY", "V3I_YANG", "RA_APER", "DEC_APER", "PA_APER", "VA_RA", "VA_DEC",
                "VA_SCALE", "BARTDELT", "BSTRTIME", "BENDTIME", "BMIDTIME", "HELIDELT",
                "HSTRTIME", "HENDTIME", "HMIDTIME", "JWST_X", "JWST_Y", "JWST_Z", "JWST_DX",
                "JWST_DY", "JWST_DZ", "VELOSYS", "GS_RA", "GS_DEC", "GS_URA", "GS_UDEC",
                "GS_MAG", "GS_UMAG", "PCS_MODE", "GSCENTX", "GSCENTY", "JITTERMS", "GS_ORDER",
                "GSSTRTTM", "GSENDTIM", "GDSTARID", "GS_EPOCH", "GS_MUDEC", "GS_MURA",
                "GS_PARAL", "GS_V3_PA"]
    cards += [(k, 151.75 + i * 0.013, "Pointing / ephemeris value") for i, k in enumerate(pointing)]
    cards += [(f"ENGQ{i:04d}", float(i) * 0.5, "Engineering telemetry mnemonic") for i in range(60)]
    for keyword, value, comment in cards:
        h[keyword] = (value, comment)
    for title in ("Program information", "Observation identifiers", "Target information",
                  "Instrument configuration", "Exposure parameters", "Reference file information"):
        h.add_comment("")
        h.add_comment(title)
    return h


def _sci_header(s_region: bool) -> fits.Header:
    """A SCI extension header with a TAN-SIP WCS (and its inverse), photometry, and S_REGION."""
    h = fits.Header()
    h["EXTNAME"] = "SCI"
    h["BUNIT"] = "MJy/sr"
    h["PHOTMJSR"] = (4.87, "Flux density (MJy/steradian) producing 1 cps")
    h["PHOTUJA2"] = (114.5, "Flux density (uJy/arcsec2) producing 1 cps")
    h["PIXAR_SR"] = (2.29e-14, "Nominal pixel area in steradians")
    h["PIXAR_A2"] = (0.000974, "Nominal pixel area in arcsec^2")
    h["WCSAXES"] = 2
    h["CRPIX1"], h["CRPIX2"] = SIDE / 2 + 0.5, SIDE / 2 + 0.5
    h["CRVAL1"], h["CRVAL2"] = 151.7578, -40.4367
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN-SIP", "DEC--TAN-SIP"
    h["CUNIT1"], h["CUNIT2"] = "deg", "deg"
    h["CDELT1"], h["CDELT2"] = 8.6e-6, 8.6e-6
    h["PC1_1"], h["PC1_2"], h["PC2_1"], h["PC2_2"] = -0.5, 0.866, 0.866, 0.5
    for prefix, order in (("A", 4), ("B", 4), ("AP", 4), ("BP", 4)):
        h[f"{prefix}_ORDER"] = order
        for i in range(order + 1):
            for j in range(order + 1 - i):
                if prefix in ("A", "B") and i + j < 2:
                    continue
                h[f"{prefix}_{i}_{j}"] = 1e-7 * (i + 1) / (j + 2)
    if s_region:
        h["S_REGION"] = _region(151.7578, -40.4367)
    return h


def _region(ra: float, dec: float) -> str:
    """A square footprint about 3 arcsec across, as fixed-width STC-S (every file's is as long)."""
    half = 0.0004 / max(np.cos(np.radians(dec)), 0.05)
    low, high = dec - 0.0004, dec + 0.0004
    corners = [(ra - half, low), (ra + half, low), (ra + half, high), (ra - half, high)]
    return "POLYGON ICRS " + " ".join(f"{a % 360:010.6f} {d:+010.6f}" for a, d in corners)


def _template(path: Path, s_region: bool) -> None:
    rng = np.random.default_rng(1)
    sci = fits.ImageHDU(rng.standard_normal((SIDE, SIDE)).astype(np.float32), _sci_header(s_region))
    err = fits.ImageHDU(np.abs(rng.standard_normal((SIDE, SIDE))).astype(np.float32), name="ERR")
    dq = fits.ImageHDU(np.zeros((SIDE, SIDE), np.uint32), name="DQ")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a few long comments are cut to fit their cards
        fits.HDUList([fits.PrimaryHDU(header=_primary_header()), sci, err, dq]).writeto(path, checksum=True)


def _encode_checksum(value: int) -> bytes:
    """The 16-character ASCII encoding of a 32-bit ones' complement sum (FITS checksum convention)."""
    out = bytearray(16)
    for i in range(4):
        byte = (value >> (24 - 8 * i)) & 0xFF
        chars = [byte // 4 + 0x30] * 4
        chars[0] += byte % 4
        changed = True
        while changed:
            changed = False
            for j in (0, 2):
                if chars[j] in _CHECKSUM_EXCLUDE or chars[j + 1] in _CHECKSUM_EXCLUDE:
                    chars[j] += 1
                    chars[j + 1] -= 1
                    changed = True
        for j in range(4):
            out[4 * j + i] = chars[j]
    return bytes(out[-1:] + out[:-1])


class _Hdu:
    """One HDU of the template: its header bytes, where its CHECKSUM value sits, its data sum."""

    def __init__(self, raw: bytes, start: int, header_end: int, data_end: int):
        self.header = bytearray(raw[start:header_end])
        self.data = raw[header_end:data_end]
        self.data_sum = ones_complement_sum(self.data)
        card = self.header.find(b"CHECKSUM= '")
        self.checksum_at = card + 11

    def set(self, keyword: str, value: str | float) -> None:
        """Replace a card (with its CONTINUE cards) by one of the same length, keeping its comment."""
        at = self.header.find(keyword.ljust(8).encode() + b"= ")
        if at < 0 or at % 80:
            raise KeyError(keyword)
        end = at + 80
        while self.header[end:end + 8] == b"CONTINUE":
            end += 80
        old = fits.Card.fromstring(bytes(self.header[at:end]))
        image = fits.Card(keyword, value, old.comment).image.encode()
        if len(image) != end - at:
            raise ValueError(f"{keyword} = {value!r} does not fit the template's {end - at} bytes")
        self.header[at:end] = image

    def sealed(self) -> bytes:
        self.header[self.checksum_at:self.checksum_at + 16] = b"0" * 16
        total = ones_complement_sum(bytes(self.header), self.data_sum)
        self.header[self.checksum_at:self.checksum_at + 16] = _encode_checksum(~total & 0xFFFFFFFF)
        return bytes(self.header) + self.data


def _split(raw: bytes) -> list[_Hdu]:
    hdus = []
    with fits.open(io.BytesIO(raw)) as hdul:
        for hdu in hdul:
            info = hdu.fileinfo()
            hdus.append(_Hdu(raw, info["hdrLoc"], info["datLoc"], info["datLoc"] + info["datSpan"]))
    return hdus


NIRCAM_DETECTORS = ("nrca1", "nrca2", "nrca3", "nrca4", "nrcalong", "nrcb1", "nrcb2", "nrcb3", "nrcb4", "nrcblong")


def make_files(folder: Path, count: int, s_region: bool, per_observation: int = 10) -> list[Path]:
    """``count`` files from one template, each with its own file name, date and pointing.

    Every ``per_observation`` consecutive files share an OBS_ID, as the files of one JWST exposure
    do (NIRCam's ten detectors, then further exposures of the same activity), so one partition.
    """
    folder.mkdir(parents=True)
    template = folder.parent / "template.fits"
    _template(template, s_region)
    hdus = _split(template.read_bytes())
    primary, sci = hdus[0], hdus[1]
    rest = b"".join(h.header + h.data for h in hdus[2:])
    rng = np.random.default_rng(2)
    paths = []
    for i in range(count):
        obs, member = divmod(i, per_observation)
        exposure, detector = member // len(NIRCAM_DETECTORS) + 1, NIRCAM_DETECTORS[member % len(NIRCAM_DETECTORS)]
        program, visit = 2736 + obs // 500, obs % 500
        name = f"jw{program:05d}{visit:03d}001_02105_{exposure:05d}_{detector}_cal.fits"
        ra, dec = rng.uniform(0, 360), np.degrees(np.arcsin(rng.uniform(-0.99, 0.99)))
        day = 59733 + i * 0.37
        primary.set("FILENAME", name)
        primary.set("OBS_ID", f"V{program:05d}{visit:03d}001P0000000002105")
        primary.set("EXPOSURE", str(exposure))
        primary.set("DETECTOR", detector.upper())
        primary.set("EXPSTART", day)
        primary.set("EXPEND", day + 0.0026)
        sci.set("CRVAL1", ra)
        sci.set("CRVAL2", dec)
        if s_region:
            sci.set("S_REGION", _region(ra, dec))
        path = folder / name
        path.write_bytes(primary.sealed() + sci.sealed() + rest)
        paths.append(path)
    template.unlink()
    for sample in (paths[0], paths[-1]):
        check = verify_fits(sample)
        if check.status != "ok" or check.checked != 4:
            raise RuntimeError(f"generated {sample.name} does not verify: {check}")
        with fits.open(sample, checksum=True) as hdul, warnings.catch_warnings():
            warnings.simplefilter("error")
            hdul.verify("exception")
    return paths


# -------------------------------------------------------------------------------- bare loop
def bare_loop(paths: list[Path]) -> float:
    """Seconds to read the primary and SCI headers and the WCS footprint of every file."""
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in paths:
            with fits.open(path, lazy_load_hdus=True) as hdul:
                primary = hdul[0].header
                sci = hdul["SCI"].header
                footprint = WCS(sci).calc_footprint()
            if primary["OBS_ID"] is None or not np.isfinite(footprint).all():
                raise RuntimeError(f"{path}: no footprint")
    return time.perf_counter() - started


# --------------------------------------------------------------------------------- skyassets
class _Timers:
    """Wall time per phase, summed over calls, from wrappers around the pipeline's functions."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, owner: Any, name: str, phase: str) -> Callable[[], None]:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - started
                self.calls[phase] += 1

        setattr(owner, name, timed)
        return lambda: setattr(owner, name, original)

    @contextlib.contextmanager
    def phase(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - started
            self.calls[phase] += 1


def run_skyassets(
    paths: list[Path], work: Path, postgres_url: str | None = None
) -> tuple[float, _Timers, dict[str, int]]:
    """Seconds for ``ingest`` and the catalog publish through a SQLite-backed Dagster instance, or a
    PostgreSQL one (``postgres_url``: deploy/dagster.yaml's storage on that database)."""
    from dagster import DagsterInstance, DagsterRunStatus

    import skyassets.archive.download as download
    import skyassets.cli.runs as runs
    import skyassets.fits.meta as meta
    from skyassets.cli.commands import prepare_dagster_home
    from skyassets.definitions import defs
    from skyassets.lake.home import Home
    from skyassets.lake.store import Lake

    backend = "postgres" if postgres_url else "sqlite"
    home = Home(work / f"home-{backend}")
    os.environ["DAGSTER_HOME"] = str(work / f"dagster-{backend}")
    if postgres_url:
        Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
        settings = Path(__file__).resolve().parents[1] / "skyassets" / "dagster.yaml"
        os.environ["SKYASSETS_POSTGRES_URL"] = postgres_url
        (Path(os.environ["DAGSTER_HOME"]) / "dagster.yaml").write_text(
            settings.read_text() + "\nstorage:\n  postgres:\n    postgres_url:\n      env: SKYASSETS_POSTGRES_URL\n"
        )
    dagster_home = prepare_dagster_home(home)  # skyassets' dagster.yaml, as `skyassets ingest` sets it up
    timers = _Timers()
    restore = [
        timers.wrap(runs, "local_files", "find files"),
        timers.wrap(runs, "group_by_partition", "partition keys (header reads)"),
        timers.wrap(runs, "record_landed", "landing records (Parquet)"),
        # the assets import these in their bodies, so the modules' own names are the ones wrapped
        timers.wrap(download, "download_files", "copy + verify"),
        timers.wrap(meta, "extract_many", "header extraction"),
        timers.wrap(Lake, "write", "lake Parquet in runs"),
        timers.wrap(Lake, "write_partitions", "lake Parquet in runs"),
        timers.wrap(Lake, "read", "lake Parquet in runs"),
        timers.wrap(Lake, "read_partitions", "lake Parquet in runs"),
    ]
    instance = DagsterInstance.from_config(str(dagster_home))
    try:
        restore.append(timers.wrap(instance, "add_dynamic_partitions", "add partitions"))
        started = time.perf_counter()
        with timers.phase("ingest"):
            report = runs.ingest([str(paths[0].parent)], home, instance)
            files, partitions, failed = report.files, len(report.partitions), report.failed_runs
        with timers.phase("catalog publish"):
            published = defs.resolve_job_def("catalog_job").execute_in_process(
                instance=instance,
                run_config={**runs.QUIET, "resources": {"home": {"config": {"root": str(home.root)}}}},
            )
        elapsed = time.perf_counter() - started
        records = instance.get_run_records()
        counts = {
            "files": files, "partitions": partitions, "failed_runs": len(failed),
            "runs": len(records),
            "events": sum(len(instance.get_records_for_run(r.dagster_run.run_id, limit=1_000_000).records)
                          for r in records),
            "successful_runs": sum(r.dagster_run.status == DagsterRunStatus.SUCCESS for r in records),
        }
        if failed or not published.success or files != len(paths):
            raise RuntimeError(f"the ingest did not succeed: {counts}")
    finally:
        for undo in restore:
            undo()
        instance.dispose()
    return elapsed, timers, counts


def report(count: int, bare: float, sky: float, timers: _Timers, counts: dict[str, int]) -> float:
    bare_rate, sky_rate = count / bare, count / sky
    ratio = sky_rate / bare_rate
    print(f"files: {count} ({counts['partitions']} partitions, {counts['runs']} runs recorded, "
          f"{counts['successful_runs']} successful)")
    print(f"bare loop : {bare_rate:8.1f} files/s  ({bare:.2f} s, one process)")
    print(f"skyassets : {sky_rate:8.1f} files/s  ({sky:.2f} s)")
    print(f"ratio     : {100 * ratio:.0f}% of the bare loop (target >= {100 * TARGET:.0f}%)")
    s = timers.seconds
    steps = ("find files", "partition keys (header reads)", "landing records (Parquet)", "add partitions")
    registration = sum(s[k] for k in steps)
    runs_wall = s["ingest"] - registration
    in_runs = s["copy + verify"] + s["header extraction"] + s["lake Parquet in runs"]
    lines = [
        ("partition registration", registration, ""),
        ("  find files", s["find files"], ""),
        ("  partition keys (header reads)", s["partition keys (header reads)"], ""),
        ("  landing records (Parquet)", s["landing records (Parquet)"], ""),
        ("  add partitions", s["add partitions"], ""),
        ("runs", runs_wall, f"{counts['runs'] - 1} landing runs"),
        ("  copy + verify", s["copy + verify"], ""),
        ("  header extraction", s["header extraction"], ""),
        ("  lake Parquet (manifests, images)", s["lake Parquet in runs"], "one file per partition and asset"),
        ("  Dagster", runs_wall - in_runs,
         f"run set-up, {4 * counts['partitions']} planned + materialisation events, the rest of the assets"),
        ("catalog publish", s["catalog publish"], "catalog_job"),
        ("other", sky - s["ingest"] - s["catalog publish"], ""),
    ]
    print("where the skyassets time goes:")
    for label, seconds, note in lines:
        print(f"  {label:<34} {seconds:7.2f} s  {100 * seconds / sky:5.1f}%  {note}")
    return ratio


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A private PostgreSQL server on loopback from scripts/postgres.sh (as the tests start it); its URL."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "postgres.sh"
    started = subprocess.run(["bash", str(script), "start"], capture_output=True, text=True, check=True)
    values = dict(line.removeprefix("export ").split("=", 1)
                  for line in started.stdout.splitlines() if line.startswith("export "))
    try:
        yield values["SKYASSETS_POSTGRES_URL"]
    finally:
        subprocess.run(["bash", str(script), "stop", values["SKYASSETS_POSTGRES_DIR"]], check=False)


def compare_backends(count: int, bare: float, sqlite: float, sqlite_counts: dict[str, int],
                     postgres: float, postgres_counts: dict[str, int]) -> None:
    """Files/s and Dagster events/s of the same ingest on both instance storages, each against the bare loop."""
    settings = ", ".join(f"{name}={os.environ.get(name, 'unset')}" for name in EVENT_SETTINGS)
    print(f"instance storage (same files, same run, the whole ingest + catalog publish; {settings}):")
    for name, seconds, counts in (("SQLite", sqlite, sqlite_counts), ("PostgreSQL", postgres, postgres_counts)):
        print(f"  {name:<10} {count / seconds:8.1f} files/s  {counts['events'] / seconds:8.1f} events/s  "
              f"{100 * bare / seconds:4.0f}% of the bare loop  ({counts['events']} events, {counts['runs']} runs, "
              f"{seconds:.2f} s)")
    print(f"  PostgreSQL / SQLite: {sqlite / postgres:.2f}x the files/s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=2000, help="number of files (default 2000)")
    parser.add_argument("--workdir", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                        help="where the temporary folder goes (default /dev/shm)")
    parser.add_argument("--per-observation", type=int, default=10,
                        help="files sharing one OBS_ID, i.e. one partition (default 10, a NIRCam exposure's "
                             "detectors; 1 makes every file its own partition)")
    parser.add_argument("--no-s-region", dest="s_region", action="store_false",
                        help="leave S_REGION out of the SCI headers (footprints from the WCS)")
    parser.add_argument("--postgres", action="store_true",
                        help="also ingest the same files through a PostgreSQL instance (a private server that "
                             "scripts/postgres.sh starts and stops) and compare events/s and files/s with SQLite")
    parser.add_argument("--embeddings", action="store_true",
                        help="let the search index embed every document, as with the embeddings extra installed")
    args = parser.parse_args()
    if not args.embeddings:
        os.environ["SKYASSETS_EMBEDDING_MODEL"] = "none"
    warnings.filterwarnings("ignore", message=".*is currently in beta.*")
    work = Path(tempfile.mkdtemp(prefix="skyassets-bench-ingest-", dir=args.workdir))
    try:
        started = time.perf_counter()
        paths = make_files(work / "drop", args.files, args.s_region, args.per_observation)
        size = paths[0].stat().st_size
        print(f"generated {len(paths)} files of {size / 1e3:.0f} kB in {time.perf_counter() - started:.1f} s "
              f"({'with' if args.s_region else 'without'} S_REGION) under {work}; search index "
              f"{'with embeddings' if args.embeddings else 'lexical'}")
        bare = bare_loop(paths)
        sky, timers, counts = run_skyassets(paths, work)
        ratio = report(len(paths), bare, sky, timers, counts)
        if args.postgres:
            with postgres_server() as url:
                pg, _, pg_counts = run_skyassets(paths, work, postgres_url=url)
            compare_backends(len(paths), bare, sky, counts, pg, pg_counts)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
