"""The column schemas of the lake's tables, with units and descriptions in the field metadata.

They live here, at the bottom of the package (pyarrow only), so that the lake, the catalog and the
landing zone know every table's columns without importing astropy, photutils or scipy; the
modules that make the rows (``fits.meta``, ``imaging.quality``) import their schema from here.
"""

from __future__ import annotations

import pyarrow as pa

HOME_RELATIVE = b"home_relative"
"""Field metadata key of a path column relative to the skyassets home (the catalog shows its full
location beside it)."""


def home_relative_columns(schema: pa.Schema) -> list[str]:
    """The columns of ``schema`` that hold paths relative to the skyassets home."""
    return [f.name for f in schema if (f.metadata or {}).get(HOME_RELATIVE)]


def schema_field(name: str, typ: pa.DataType, unit: str | None, doc: str, *, home_relative: bool = False) -> pa.Field:
    """A column with its unit and description in the field metadata, and whether it is a path
    relative to the skyassets home. Public so that every table the project writes documents its
    columns the same way."""
    meta = {b"description": doc.encode()}
    if unit:
        meta[b"unit"] = unit.encode()
    if home_relative:
        meta[HOME_RELATIVE] = b"true"
    return pa.field(name, typ, metadata=meta)


# -------------------------------------------------------------------------------------- archive
# MAST's CAOM columns keep MAST's names and units (wavelengths in nm here, unlike ObsCore's metres).
MAST_OBSERVATIONS_SCHEMA = pa.schema([
    schema_field("obs_id", pa.string(), None, "observation id (the observations partition key)"),
    schema_field("obsid", pa.string(), None, "MAST's numeric observation id, which products are listed by"),
    schema_field("intentType", pa.string(), None, "science or calibration"),
    schema_field("obs_collection", pa.string(), None, "mission"),
    schema_field("provenance_name", pa.string(), None, "pipeline or project that made the data"),
    schema_field("instrument_name", pa.string(), None, "instrument (and detector or mode)"),
    schema_field("project", pa.string(), None, "processing project"),
    schema_field("filters", pa.string(), None, "filters or gratings, as MAST lists them"),
    schema_field("wavelength_region", pa.string(), None, "e.g. OPTICAL, INFRARED"),
    schema_field("target_name", pa.string(), None, "target as named by the observer"),
    schema_field("target_classification", pa.string(), None, "target type"),
    schema_field("s_ra", pa.float64(), "deg", "ICRS right ascension of the pointing"),
    schema_field("s_dec", pa.float64(), "deg", "ICRS declination of the pointing"),
    schema_field("dataproduct_type", pa.string(), None, "image, spectrum, cube, ..."),
    schema_field("proposal_pi", pa.string(), None, "principal investigator"),
    schema_field("calib_level", pa.int16(), None, "highest calibration level available"),
    schema_field("t_min", pa.float64(), "d", "start time, MJD"),
    schema_field("t_max", pa.float64(), "d", "stop time, MJD"),
    schema_field("t_exptime", pa.float64(), "s", "exposure time"),
    schema_field("em_min", pa.float64(), "nm", "shortest wavelength"),
    schema_field("em_max", pa.float64(), "nm", "longest wavelength"),
    schema_field("obs_title", pa.string(), None, "proposal title"),
    schema_field("t_obs_release", pa.float64(), "d", "date the data become public, MJD"),
    schema_field("proposal_id", pa.string(), None, "program / proposal number"),
    schema_field("proposal_type", pa.string(), None, "kind of proposal"),
    schema_field("sequence_number", pa.int64(), None, "sequence number (HLSP, TESS)"),
    schema_field("s_region", pa.string(), "deg", "footprint, STC-S"),
    schema_field("jpegURL", pa.string(), None, "MAST preview image"),
    schema_field("dataURL", pa.string(), None, "MAST data URL"),
    schema_field("dataRights", pa.string(), None, "PUBLIC, EXCLUSIVE_ACCESS or RESTRICTED"),
    schema_field("mtFlag", pa.bool_(), None, "moving target"),
    schema_field("srcDen", pa.float64(), None, "source density"),
    schema_field("objID", pa.string(), None, "MAST's plane id"),
    schema_field("watchlist_entry", pa.string(), None, "the watchlist entries that found it, ','-joined"),
    schema_field("distance", pa.float64(), "arcsec",
                 "from the position a position entry searched, as MAST gives it; null for other entries"),
])
MAST_PRODUCTS_SCHEMA = pa.schema([
    schema_field("partition", pa.string(), None, "observation id (the observations partition key)"),
    schema_field("obsID", pa.string(), None, "MAST's numeric id of the product's observation"),
    schema_field("obs_collection", pa.string(), None, "mission"),
    schema_field("dataproduct_type", pa.string(), None, "image, spectrum, cube, ..."),
    schema_field("obs_id", pa.string(), None, "observation id of the product"),
    schema_field("description", pa.string(), None, "product description"),
    schema_field("type", pa.string(), None, "S (simple) or C (composite)"),
    schema_field("dataURI", pa.string(), None, "MAST URI of the file"),
    schema_field("productType", pa.string(), None, "SCIENCE, CALIBRATION, AUXILIARY, ..."),
    schema_field("productGroupDescription", pa.string(), None, "e.g. Minimum Recommended Products"),
    schema_field("productSubGroupDescription", pa.string(), None, "file kind, e.g. CAL, I2D, FLT, DRZ"),
    schema_field("productDocumentationURL", pa.string(), None, "documentation of the product"),
    schema_field("project", pa.string(), None, "processing project"),
    schema_field("prvversion", pa.string(), None, "pipeline version"),
    schema_field("proposal_id", pa.string(), None, "program / proposal number"),
    schema_field("productFilename", pa.string(), None, "file name (checked safe)"),
    schema_field("size", pa.int64(), "byte", "file size"),
    schema_field("parent_obsid", pa.string(), None, "MAST id of the parent observation"),
    schema_field("dataRights", pa.string(), None, "PUBLIC, EXCLUSIVE_ACCESS or RESTRICTED"),
    schema_field("calib_level", pa.int16(), None, "1 raw, 2 calibrated exposure, 3 combined product"),
    schema_field("filters", pa.string(), None, "filters, as MAST lists them"),
    schema_field("s3_key", pa.string(), None, "key in MAST's public S3 bucket; null when only on HTTP"),
    schema_field("http_url", pa.string(), None, "MAST download URL"),
    schema_field("path", pa.string(), None,
                 "where the file is stored once downloaded, relative to the skyassets home", home_relative=True),
])
FITS_FILES_SCHEMA = pa.schema([
    schema_field("partition", pa.string(), None, "observation id (the observations partition key)"),
    schema_field("dataURI", pa.string(), None, "MAST URI, or the landed file's location"),
    schema_field("signature", pa.string(), None, "a landed file's size and mtime or ETag; null for MAST products"),
    schema_field("filename", pa.string(), None, "file name"),
    schema_field("path", pa.string(), None,
                 "where the file is stored, relative to the skyassets home", home_relative=True),
    schema_field("size", pa.int64(), "byte", "file size"),
    schema_field("sha256", pa.string(), None, "SHA-256 of the file"),
    schema_field("source", pa.string(), None, "where the bytes came from: s3, http or local"),
    schema_field("status", pa.string(), None,
                 "what the observation's last run did with the file: downloaded (from MAST), copied (from the "
                 "landing zone), unchanged (found stored and verified, not fetched again); quarantined when "
                 "refused on arrival (a landed file; no copy, no sha256) or by cataloguing (older manifests "
                 "say skipped for unchanged, downloaded for copied)"),
    schema_field("fits_checksum", pa.string(), None, "result of the FITS CHECKSUM/DATASUM check"),
    schema_field("sha256_checked", pa.bool_(), None,
                 "the SHA-256 matched the one the archive sent for the object (S3 ChecksumSHA256); "
                 "null: recorded before the column existed"),
    schema_field("attempts", pa.int32(), None, "tries the download took"),
    schema_field("resumed_from", pa.int64(), "byte", "offset a resumed download started at; null if not resumed"),
    schema_field("seconds", pa.float64(), "s", "time spent fetching and verifying"),
    schema_field("bytes_per_second", pa.float64(), "byte s-1", "transfer rate"),
])
LANDING_SCHEMA = pa.schema([
    schema_field("partition", pa.string(), None, "observation id (the observations partition key)"),
    schema_field("source", pa.string(), None, "local, or the landing bucket's URL scheme"),
    schema_field("location", pa.string(), None, "the landed file: a local path or an object key"),
    schema_field("relative", pa.string(), None, "the file's path below the landing folder"),
    schema_field("size", pa.int64(), "byte", "file size when landed"),
    schema_field("signature", pa.string(), None, "size and mtime, or ETag: changes when the file does"),
    schema_field("filename", pa.string(), None, "name the copy is stored under (safe, unique in its partition)"),
    schema_field("path", pa.string(), None,
                 "where the copy is stored, relative to the skyassets home", home_relative=True),
])
LANDING_INDEX_SCHEMA = pa.schema([
    schema_field("location", pa.string(), None, "a landed file: a local path or an object key"),
    schema_field("partition", pa.string(), None, "the observation (partition) whose landing record holds it now"),
])

# What the watchlist asked of an observation's products when they were last listed: the demo and
# new_observations_sensor list and fetch again an observation the watchlist now asks other products of.
PRODUCT_CHOICES_SCHEMA = pa.schema([
    schema_field("obs_id", pa.string(), None, "the observation (partition)"),
    schema_field("products", pa.string(), None, "the watchlist's product choice for it, as JSON"),
])

# ------------------------------------------------------------------------------------ catalogue
IMAGE_SCHEMA = pa.schema([
    schema_field("dataproduct_type", pa.string(), None,
                 "ObsCore: image, or cube when a non-spatial axis has >1 pixel"),
    schema_field("calib_level", pa.int16(), None, "ObsCore: 1 raw, 2 calibrated exposure, 3 combined product"),
    schema_field("obs_collection", pa.string(), None, "ObsCore: mission (TELESCOP)"),
    schema_field("obs_id", pa.string(), None, "ObsCore: observation id"),
    schema_field("obs_publisher_did", pa.string(), None, "ObsCore: publisher's dataset id (MAST missions)"),
    schema_field("access_url", pa.string(), None, "ObsCore: where the file was fetched from"),
    schema_field("access_format", pa.string(), None, "ObsCore: MIME type"),
    schema_field("access_estsize", pa.int64(), "kbyte", "ObsCore: file size"),
    schema_field("target_name", pa.string(), None, "ObsCore: target as named by the observer"),
    schema_field("s_ra", pa.float64(), "deg", "ObsCore: ICRS right ascension of the image centre"),
    schema_field("s_dec", pa.float64(), "deg", "ObsCore: ICRS declination of the image centre"),
    schema_field("s_fov", pa.float64(), "deg", "ObsCore: diameter of the footprint"),
    schema_field("s_region", pa.string(), "deg", "ObsCore: footprint, STC-S POLYGON ICRS"),
    schema_field("s_resolution", pa.float64(), "arcsec", "ObsCore: PSF FWHM, filled by image measurement"),
    schema_field("s_xel1", pa.int64(), None, "ObsCore: pixels along the first spatial axis"),
    schema_field("s_xel2", pa.int64(), None, "ObsCore: pixels along the second spatial axis"),
    schema_field("t_min", pa.float64(), "d", "ObsCore: start time, MJD"),
    schema_field("t_max", pa.float64(), "d", "ObsCore: stop time, MJD"),
    schema_field("t_exptime", pa.float64(), "s", "ObsCore: exposure time"),
    schema_field("em_min", pa.float64(), "m", "ObsCore: shortest wavelength (half-maximum edge of the bandpass)"),
    schema_field("em_max", pa.float64(), "m", "ObsCore: longest wavelength (half-maximum edge of the bandpass)"),
    schema_field("facility_name", pa.string(), None, "ObsCore: telescope"),
    schema_field("instrument_name", pa.string(), None, "ObsCore: instrument (HST: INSTRUME/DETECTOR)"),
    schema_field("o_ucd", pa.string(), None, "ObsCore: UCD of the pixel values"),
    schema_field("proposal_id", pa.string(), None, "program / proposal number"),
    schema_field("filter", pa.string(), None, "optical elements in the beam, ';'-joined, clear positions left out"),
    schema_field("pupil", pa.string(), None, "JWST PUPIL wheel element"),
    schema_field("detector", pa.string(), None, "DETECTOR keyword"),
    schema_field("ccdchip", pa.int16(), None, "HST CCD chip of this extension"),
    schema_field("observation", pa.string(), None, "JWST observation number (OBSERVTN)"),
    schema_field("visit", pa.string(), None, "JWST visit number (VISIT)"),
    schema_field("visit_id", pa.string(), None, "JWST VISIT_ID"),
    schema_field("asn_id", pa.string(), None, "association id (HST ASN_ID, JWST ASNTABLE product)"),
    schema_field("bunit", pa.string(), None, "unit of the pixel values as written (BUNIT)"),
    schema_field("pixel_scale", pa.float64(), "arcsec", "square root of the pixel area at the reference point"),
    schema_field("photmjsr", pa.float64(), "MJy sr-1 s DN-1", "JWST: surface brightness of 1 DN/s"),
    schema_field("photuja2", pa.float64(), "uJy arcsec-2 s DN-1", "JWST: surface brightness of 1 DN/s"),
    schema_field("pixar_sr", pa.float64(), "sr", "nominal pixel area"),
    schema_field("pixar_a2", pa.float64(), "arcsec2", "nominal pixel area"),
    schema_field("photflam", pa.float64(), "erg cm-2 Angstrom-1 electron-1", "HST: f_lambda of 1 e-/s"),
    schema_field("photfnu", pa.float64(), "Jy s electron-1", "HST: f_nu of 1 e-/s"),
    schema_field("photplam", pa.float64(), "Angstrom", "HST: pivot wavelength"),
    schema_field("photbw", pa.float64(), "Angstrom", "HST: RMS bandwidth"),
    schema_field("photzpt", pa.float64(), "mag", "HST: ST magnitude zero point"),
    schema_field("magzpt", pa.float64(), "mag", "ground: photometric zero point as written (MAGZPT)"),
    schema_field("zp_ab", pa.float64(), "mag", "AB magnitude of a source whose pixel values (in bunit) sum to 1"),
    schema_field("sha256", pa.string(), None, "SHA-256 of the file"),
    schema_field("fits_sha256", pa.string(), None,
                 "SHA-256 of the FITS file it holds: of the inflated stream of a .fits.gz or .fits.bz2, "
                 "sha256 otherwise; the image's identity"),
    schema_field("size", pa.int64(), "byte", "file size"),
    schema_field("file_name", pa.string(), None, "file name"),
    schema_field("path", pa.string(), None,
                 "where the file is stored (relative to the skyassets home when catalogued there)", home_relative=True),
    schema_field("hdu_index", pa.int32(), None, "0-based HDU number in the file"),
    schema_field("hdu_name", pa.string(), None, "EXTNAME"),
    schema_field("hdu_ver", pa.int32(), None, "EXTVER"),
    schema_field("header_json", pa.string(), None, '{"primary": {...}, "extension": {...} or null}'),
    schema_field("wcs_problem", pa.string(), None, "why the spatial columns are null, or null"),
])

# -------------------------------------------------------------------------------------- quality
IDENTITY_FIELDS = (
    schema_field("obs_id", pa.string(), None, "observation id (partition)"),
    schema_field("sha256", pa.string(), None, "SHA-256 of the file"),
    schema_field("hdu_index", pa.int32(), None, "0-based HDU number of the image in the file"),
)
"""The columns that name a measured image: its observation, its file's bytes and its HDU."""

QUALITY_SCHEMA = pa.schema([
    *IDENTITY_FIELDS,
    schema_field("file_name", pa.string(), None, "file name"),
    schema_field("path", pa.string(), None,
                 "where the file is stored (relative to the skyassets home when catalogued there)", home_relative=True),
    schema_field("instrument_name", pa.string(), None, "ObsCore instrument (HST: INSTRUME/DETECTOR)"),
    schema_field("filter", pa.string(), None, "optical elements in the beam, ';'-joined"),
    schema_field("obs_collection", pa.string(), None, "mission"),
    schema_field("usable", pa.bool_(), None,
                 "false when the image cannot be used at all: unreadable, no valid pixel, no valid WCS"),
    schema_field("problem", pa.string(), None,
                 "why the image is unusable or only partly measured, naming the file; null when fine"),
    schema_field("background", pa.float64(), None, "median sky level, image units (BUNIT)"),
    schema_field("background_rms", pa.float64(), None, "sky noise per pixel, image units (BUNIT)"),
    schema_field("background_method", pa.string(), None,
                 "Background2D, or sigma_clipped_stats when every box was masked"),
    schema_field("n_sources", pa.int32(), None, "sources detected 5 sigma over the noise (cosmic rays included)"),
    schema_field("n_cosmic_rays", pa.int32(), None, "detections classified as cosmic rays"),
    schema_field("n_stars_fitted", pa.int32(), None, "isolated unsaturated stars whose Moffat fit defines the PSF"),
    schema_field("fwhm_pix", pa.float64(), "pix",
                 "PSF FWHM (geometric mean of the axes), inverse-variance weighted mean of the fitted stars"),
    schema_field("fwhm_arcsec", pa.float64(), "arcsec", "PSF FWHM on the sky"),
    schema_field("ellipticity", pa.float64(), None,
                 "PSF ellipticity 1 - b/a from the fitted stars' weighted mean components (e cos 2φ, e sin 2φ)"),
    schema_field("psf_beta", pa.float64(), None, "Moffat beta of the PSF (median of the fitted stars)"),
    schema_field("n_eff_pix", pa.float64(), "pix2",
                 "noise-equivalent area of the PSF, 1 / sum(p_i^2), pixel-integrated"),
    schema_field("frac_nan", pa.float64(), None, "fraction of pixels that are NaN or infinite"),
    schema_field("frac_zero", pa.float64(), None, "fraction of pixels exactly 0 (fill)"),
    schema_field("frac_saturated", pa.float64(), None,
                 "fraction of pixels saturated (DQ, saturation level or plateau)"),
    schema_field("frac_dq_flagged", pa.float64(), None,
                 "fraction of pixels the DQ array marks unusable; null without DQ"),
    schema_field("frac_unusable", pa.float64(), None,
                 "fraction of the exposed footprint that is NaN, zero, DQ-flagged or saturated"),
    schema_field("pixel_scale", pa.float64(), "arcsec", "pixel scale from the WCS (square root of the pixel area)"),
    schema_field("pixel_scale_nominal", pa.float64(), "arcsec", "the instrument's nominal pixel scale"),
    schema_field("pixel_scale_ratio", pa.float64(), None, "pixel_scale / pixel_scale_nominal"),
    schema_field("footprint_finite", pa.bool_(), None,
                 "the WCS maps the image centre and corners to finite sky positions"),
    schema_field("header_flags", pa.string(), None,
                 "header quality keywords that are not nominal, e.g. ENG_QUAL=SUSPECT; null when all are"),
    schema_field("zp_ab", pa.float64(), "mag", "AB magnitude of a source whose pixel values sum to 1"),
    schema_field("depth_5sigma_ab", pa.float64(), "mag",
                 "5 sigma point-source depth: zp_ab - 2.5 log10(5 sigma sqrt(n_eff))"),
    schema_field("seconds", pa.float64(), "s", "time spent measuring the image"),
    schema_field("measured_from", pa.string(), None,
                 "digest of what the measurement read (the file's SHA-256, the HDU, the catalogue's zero point, "
                 "pixel scale and WCS problem) and of the measuring code's version: an image whose digest is "
                 "unchanged keeps its measurement"),
    schema_field("score", pa.float64(), None,
                 "0-100: 100 x depth x shape x data terms; 0 when a gate fails (docs/quality.md)"),
    schema_field("score_depth", pa.float64(), None,
                 "100 x min(1, effective-time ratio against comparable images); null without depth"),
    schema_field("score_shape", pa.float64(), None, "100 at ellipticity <= 0.10 falling linearly to 0 at 0.40"),
    schema_field("score_data", pa.float64(), None, "100 x (1 - frac_unusable)"),
    schema_field("depth_reference_ab", pa.float64(), "mag",
                 "median 5 sigma depth of comparable images (same instrument and filter)"),
    schema_field("effective_time_ratio", pa.float64(), None,
                 "10^(0.8 (depth - reference depth)): exposure-time equivalent against the reference"),
    schema_field("flag", pa.string(), None, "good (score >= 50), usable, or reject (score < 33.3 or a gate)"),
    schema_field("flag_reason", pa.string(), None, "what lowered the score or the flag; null for a good image"),
])
SOURCE_SCHEMA = pa.schema([
    *IDENTITY_FIELDS,
    schema_field("file_name", pa.string(), None, "file name, as in images and quality"),
    schema_field("path", pa.string(), None,
                 "where the file is stored (relative to the skyassets home when catalogued there)", home_relative=True),
    schema_field("source_id", pa.int32(), None, "1-based number of the detection in its image"),
    schema_field("x", pa.float64(), "pix", "0-based column of the centroid"),
    schema_field("y", pa.float64(), "pix", "0-based row of the centroid"),
    schema_field("ra", pa.float64(), "deg",
                 "ICRS right ascension from the WCS (distortions included); null without one"),
    schema_field("dec", pa.float64(), "deg", "ICRS declination from the WCS"),
    schema_field("flux", pa.float64(), None,
                 "background-subtracted flux in the finder's kernel footprint, image units"),
    schema_field("peak", pa.float64(), None, "background-subtracted peak pixel value, image units"),
    schema_field("fwhm_pix", pa.float64(), "pix", "fitted Moffat FWHM; null unless fitted"),
    schema_field("ellipticity", pa.float64(), None, "fitted ellipticity 1 - b/a; null unless fitted"),
    schema_field("sharpness", pa.float64(), None, "DAOFIND sharpness"),
    schema_field("roundness1", pa.float64(), None, "DAOFIND symmetry roundness"),
    schema_field("roundness2", pa.float64(), None, "DAOFIND marginal-fit roundness"),
    schema_field("flags", pa.string(), None,
                 "';'-joined: cosmic_ray, saturated, edge, fitted (a PSF star); empty when none"),
])

# -------------------------------------------------------------------------------------- targets
TARGET_GROUPS_SCHEMA = pa.schema([
    schema_field("obs_id", pa.string(), None, "observation id"),
    schema_field("target", pa.string(), None, "target key (the targets partition key)"),
    schema_field("target_name", pa.string(), None, "the target's name as shown"),
    schema_field("inputs_digest", pa.string(), None,
                 "digest of the target's usable images (file hash and HDU): the data version of target_images"),
])
TARGET_IMAGES_SCHEMA = pa.schema([
    schema_field("target", pa.string(), None, "target key (the targets partition key)"),
    schema_field("obs_id", pa.string(), None, "observation id"),
    schema_field("file_name", pa.string(), None, "file name"),
    schema_field("path", pa.string(), None,
                 "where the file is stored, relative to the skyassets home", home_relative=True),
    schema_field("hdu_index", pa.int32(), None, "0-based HDU number of the image in the file"),
    schema_field("sha256", pa.string(), None, "SHA-256 of the file"),
    schema_field("instrument_name", pa.string(), None, "ObsCore instrument"),
    schema_field("filter", pa.string(), None, "optical elements in the beam, ';'-joined"),
    schema_field("calib_level", pa.int16(), None, "1 raw, 2 calibrated exposure, 3 combined product"),
    schema_field("proposal_id", pa.string(), None, "program / proposal number"),
    schema_field("asn_id", pa.string(), None, "association id (HST ASN_ID, JWST ASNTABLE product)"),
    schema_field("t_exptime", pa.float64(), "s", "exposure time"),
    schema_field("score", pa.float64(), None, "quality score, 0-100"),
    schema_field("flag", pa.string(), None, "quality flag: good or usable"),
])

# ------------------------------------------------------------------------------------- products
MOSAICS_SCHEMA = pa.schema([
    schema_field("target", pa.string(), None, "target key (the targets partition key)"),
    schema_field("instrument_name", pa.string(), None, "instrument of the co-added images"),
    schema_field("filter", pa.string(), None, "filter of the co-added images"),
    schema_field("path", pa.string(), None,
                 "the mosaic's FITS file, relative to the skyassets home", home_relative=True),
    schema_field("n_inputs", pa.int32(), None, "images co-added"),
    schema_field("n_rejected", pa.int64(), None, "input pixel values left out as outliers (NREJECT)"),
    schema_field("naxis1", pa.int32(), "pix", "width"),
    schema_field("naxis2", pa.int32(), "pix", "height"),
    schema_field("s_ra", pa.float64(), "deg", "ICRS right ascension of the centre"),
    schema_field("s_dec", pa.float64(), "deg", "ICRS declination of the centre"),
    schema_field("inputs", pa.string(), None, "file names of the inputs, ';'-joined"),
    schema_field("wcs_header", pa.string(), None, "the mosaic's WCS as FITS header cards"),
])
COMPOSITES_SCHEMA = pa.schema([
    schema_field("target", pa.string(), None, "target key (the targets partition key)"),
    schema_field("recipe", pa.string(), None, "recipe name"),
    schema_field("kind", pa.string(), None, "user, classic, cross-instrument, all, narrow-band, ..."),
    schema_field("rank", pa.int32(), None, "1 = shown first"),
    schema_field("filters", pa.string(), None, "filters, blue to red, ';'-joined"),
    schema_field("hues", pa.string(), "deg", "hue of each filter's channel, ';'-joined"),
    schema_field("method", pa.string(), None, "screen or lupton"),
    schema_field("stretch", pa.string(), None, "stretch applied to each channel"),
    schema_field("png", pa.string(), None, "8-bit PNG, relative to the skyassets home", home_relative=True),
    schema_field("cube", pa.string(), None,
                 "16-bit TIFF with AVM tags, relative to the skyassets home", home_relative=True),
    schema_field("naxis1", pa.int32(), "pix", "width"),
    schema_field("naxis2", pa.int32(), "pix", "height"),
    schema_field("wcs_header", pa.string(), None, "the composite's WCS as FITS header cards"),
])
RECIPES_SCHEMA = pa.schema([
    schema_field("recipe", pa.string(), None, "recipe name"),
    schema_field("kind", pa.string(), None, "user, classic, cross-instrument, all, narrow-band, ..."),
    schema_field("rank", pa.int32(), None, "1 = made first"),
    schema_field("filters", pa.string(), None, "filters, blue to red, ';'-joined"),
    schema_field("instruments", pa.string(), None, "camera of each filter, ';'-joined"),
    schema_field("pivots_um", pa.string(), "um", "pivot wavelength of each filter, ';'-joined"),
    schema_field("reason", pa.string(), None, "why the recipe is suggested"),
    schema_field("made", pa.bool_(), None, "whether a composite was made from it"),
    schema_field("note", pa.string(), None, "why it was not made; empty when made"),
    schema_field("target", pa.string(), None, "target key (the targets partition key)"),
])
