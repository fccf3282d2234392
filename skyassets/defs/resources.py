"""Dagster resources: thin configuration wrappers around the plain-Python modules."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import yaml
from dagster import ConfigurableResource, EnvVar

from skyassets.archive.watchlist import DEFAULT_WATCHLIST, WATCHLIST_ENV, Watchlist, load_watchlist
from skyassets.defs.cluster import DaskResource
from skyassets.fits.limits import DEFAULT_MAX_MOSAIC_PIXELS
from skyassets.lake.home import CACHE_ENV, DEFAULT_CACHE_BYTES, HOME_ENV, STORAGE_ENDPOINT_ENV, STORAGE_ENV, Home
from skyassets.settings import SettingError, env_number, env_switch

# Every run process loads this module: the archive client (astroquery), the downloader (requests),
# astropy's FITS and WCS, the composites and the publishers are imported where they are used.
if TYPE_CHECKING:
    from astropy.wcs import WCS
    from astroquery.mast import ObservationsClass

    from skyassets.archive.download import DownloadConfig
    from skyassets.tiles.publish import FolderDestination, S3Destination

T = TypeVar("T", "CompositesResource", "MosaicsResource")

EMULATOR = "emulator"


class HomeResource(ConfigurableResource):
    """The local state folder: files, Parquet lake, quarantine; with ``storage`` (s3://bucket/prefix)
    files, lake and products are stored there and ``root`` keeps a bounded working copy."""

    root: str = ".skyassets"
    storage: str | None = None
    storage_endpoint: str | None = None  # an S3-protocol server other than AWS
    cache_gb: float = DEFAULT_CACHE_BYTES / (1 << 30)  # working copy of stored files kept locally

    @property
    def home(self) -> Home:
        return Home(Path(self.root).expanduser().resolve(), storage=self.storage or None,
                    endpoint=self.storage_endpoint or None, cache_bytes=int(self.cache_gb * (1 << 30)))


class LandingResource(ConfigurableResource):
    """The landing zone: a folder that observatories drop FITS files into (default ``<home>/landing``)."""

    folder: str = ""
    recursive: bool = True
    max_files: int = 20000  # entries examined per sensor tick
    max_ready: int = 3000  # files handed on per sensor tick, catalogued in one run or a few
    # An S3 prefix watched as well (s3://bucket/prefix), through dagster-aws's S3 resource:
    # credentials from the usual AWS environment, or anonymous for a public bucket.
    s3_url: str | None = None
    s3_endpoint: str | None = None
    s3_anonymous: bool = False

    def path(self, home: Home) -> Path:
        return Path(self.folder).expanduser().resolve() if self.folder else home.root / "landing"

    def s3_location(self) -> tuple[str, str]:
        """(bucket, prefix) of ``s3_url``."""
        if not self.s3_url or not self.s3_url.startswith("s3://"):
            raise ValueError(f"landing s3_url must look like s3://bucket/prefix, not {self.s3_url!r}")
        bucket, _, prefix = self.s3_url[5:].partition("/")
        return bucket, prefix

    def s3_client(self):
        from dagster_aws.s3 import S3Resource

        return S3Resource(endpoint_url=self.s3_endpoint, use_unsigned_session=self.s3_anonymous).get_client()


class WatchlistResource(ConfigurableResource):
    """The watchlist file (``packaged:watchlist.yaml`` is the demo watchlist shipped with skyassets)."""

    path: str = DEFAULT_WATCHLIST

    def load(self) -> Watchlist:
        return load_watchlist(self.path)


class ArchiveResource(ConfigurableResource):
    """Where MAST is: ``emulator`` (the built-in offline archive) or a server such as https://mast.stsci.edu.

    ``token`` is a MAST API token for exclusive-access data; give it as ``EnvVar("MAST_API_TOKEN")``
    (as ``default_resources`` does) so that run configuration records the variable's name, never
    its value. ``retry_seconds`` bounds the time one archive call spends on retries; ``timeout``
    how long one search may stay ``EXECUTING`` at MAST while it is polled (each try of it), and at
    most how long one request waits to connect (30 s) and between bytes of its answer (120 s).
    ``daily_retries`` is how many daily retries an observation that keeps failing gets before it is
    left for a person to look at (0: retried every day without end).
    """

    url: str = EMULATOR
    s3_endpoint: str | None = None
    cloud: bool = True
    s3_bucket: str = "stpubdata"
    pagesize: int = 50000
    timeout: float = 600.0
    retry_seconds: float = 300.0
    daily_retries: int = 7
    token: str | None = None
    # Side of the emulator's images in pixels: 256 keeps the demo small, 2048 gives realistic files.
    emulator_image_size: int = 256

    @property
    def mast_token(self) -> str | None:
        """The token as MAST takes it: without the newline a secret or a file often ends in; a blank
        one is none."""
        return (self.token or "").strip() or None

    def endpoints(self, home: Home) -> tuple[str, str | None]:
        """The MAST base URL and S3 endpoint (``None``: AWS) to use, starting the emulator if asked."""
        if self.url == EMULATOR:
            from skyassets.emulator import SkySpec, embedded

            emulator = embedded(home.root, SkySpec(image_size=self.emulator_image_size))
            return emulator.url, emulator.s3_endpoint
        return self.url.rstrip("/"), self.s3_endpoint

    def client(self, home: Home) -> ObservationsClass:
        from skyassets.archive.client import RetryPolicy, observations_client

        server, s3_endpoint = self.endpoints(home)
        return observations_client(
            server, s3_endpoint=s3_endpoint, cloud=self.cloud, timeout=self.timeout, pagesize=self.pagesize,
            retry=RetryPolicy(total_seconds=self.retry_seconds), token=self.mast_token,
        )

    def download_url(self, home: Home) -> str:
        return self.endpoints(home)[0] + "/api/v0.1/Download/file"


class DownloaderResource(ConfigurableResource):
    """How files are fetched: parallelism, timeouts and retries."""

    parallel: int = 4
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    retries: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    prefer_s3: bool = True
    verify_existing: bool = False

    def config(self, archive: ArchiveResource | None, home: Home) -> DownloadConfig:
        """The download settings; ``archive`` is needed only when files come from MAST's S3."""
        from skyassets.archive.download import DownloadConfig

        return DownloadConfig(
            parallel=self.parallel,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            retries=self.retries,
            backoff_base=self.backoff_base,
            backoff_max=self.backoff_max,
            s3_bucket=archive.s3_bucket if archive else "stpubdata",
            s3_endpoint=archive.endpoints(home)[1] if archive else None,
            prefer_s3=bool(archive and self.prefer_s3 and archive.cloud),
            verify_existing=self.verify_existing,
            mast_token=archive.mast_token if archive else None,
        )


class CompositesResource(ConfigurableResource):
    """How each target's colour composites are made. ``recipes`` overrides the suggested recipes per
    target key (``"*"``: every target): recipe name -> ';'-joined filters for the user's own recipe
    (ranked first), or null to drop a suggested one."""

    per_target: int = 3  # the best-ranked recipes made for each target
    method: str = "lupton"  # balanced Lupton et al. (2004) asinh, as press images; or "screen", per channel
    stretch: str = "asinh"  # per channel, for "screen": linear, sqrt, log, asinh, power, histeq, zscale
    recipes: dict[str, dict[str, str | None]] = {}

    def validated(self) -> CompositesResource:
        """This configuration, or a ValueError naming the setting that cannot be used."""
        from skyassets.imaging.composite import METHODS, STRETCHES

        if self.method not in METHODS:
            raise ValueError(f"composites.method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if self.stretch not in STRETCHES:
            raise ValueError(f"composites.stretch must be one of {', '.join(STRETCHES)}, not {self.stretch!r}")
        if self.per_target < 0:
            raise ValueError(f"composites.per_target must be 0 or more, not {self.per_target}")
        return self

    def overrides(self, target: str) -> dict[str, str | None]:
        """The recipe overrides for ``target``: those for every target, then its own."""
        return {**self.recipes.get("*", {}), **self.recipes.get(target, {})}


class MosaicsResource(ConfigurableResource):
    """How each target's mosaics are made. ``grids`` gives targets their own output grid: target key
    -> a FITS file (or a text header) whose WCS and NAXIS1/NAXIS2 are the grid; the others get
    reproject's ``find_optimal_celestial_wcs`` over their inputs."""

    downscale: int = 1  # output pixels this many times larger than the grid's
    match_background: bool = True
    reject_sigma: float | None = 5.0  # outliers between exposures; null keeps every value
    grids: dict[str, str] = {}
    max_pixels: int = DEFAULT_MAX_MOSAIC_PIXELS  # a larger grid is refused, naming its size on the sky

    def validated(self) -> MosaicsResource:
        """This configuration, or a ValueError naming the setting that cannot be used."""
        if self.downscale < 1:
            raise ValueError(f"mosaics.downscale must be 1 or more, not {self.downscale}")
        if self.max_pixels < 1:
            raise ValueError(f"mosaics.max_pixels must be 1 or more, not {self.max_pixels}")
        if self.reject_sigma is not None and not self.reject_sigma > 0:
            raise ValueError(f"mosaics.reject_sigma must be positive or null, not {self.reject_sigma}")
        return self

    def grid(self, target: str) -> tuple[WCS, tuple[int, int]] | None:
        """The output grid configured for ``target`` (WCS, (rows, columns)), else None."""
        source = self.grids.get(target)
        if source is None:
            return None
        from astropy.io import fits
        from astropy.wcs import WCS

        path = Path(source).expanduser()
        try:
            if path.suffix.lower() in (".hdr", ".txt"):
                headers = [fits.Header.fromtextfile(str(path))]
            else:
                with fits.open(path) as hdul:
                    headers = [hdu.header for hdu in hdul]
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: cannot read the grid of mosaics for {target}: {err}") from err
        for header in headers:
            wcs = WCS(header)
            if wcs.has_celestial and header.get("NAXIS1") and header.get("NAXIS2"):
                return wcs.celestial, (int(header["NAXIS2"]), int(header["NAXIS1"]))
        raise ValueError(f"{path}: no header with a celestial WCS and NAXIS1/NAXIS2 for the grid of {target}")


def settings_from_file(resource: type[T], path: str) -> T:
    """The settings of ``resource`` (its fields) in a YAML file, or a ValueError naming the file and
    what is wrong with it."""
    name = resource.__name__.removesuffix("Resource").lower()
    fields = ", ".join(resource.model_fields)
    try:
        raw = yaml.safe_load(Path(path).expanduser().read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: cannot read the {name} settings: {err}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: the {name} settings must be a mapping of {fields}")
    unknown = sorted(set(raw) - set(resource.model_fields))
    if unknown:
        raise ValueError(f"{path}: unknown {name} settings {unknown}; known: {fields}")
    try:
        return resource(**raw).validated()
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: {err}") from err


class PublishResource(ConfigurableResource):
    """Where ``publish`` writes the collection: a folder (default ``<home>/published``) or
    ``s3://bucket/prefix`` through dagster-aws's S3 resource (credentials from the usual AWS
    environment); ``public_url`` is where readers find it, written into the indexes."""

    url: str = ""
    s3_endpoint: str | None = None
    public_url: str = ""
    threads: int = 8

    def destination(self, home: Home) -> FolderDestination | S3Destination:
        from skyassets.tiles.publish import FolderDestination, S3Destination

        if self.url.startswith("s3://"):
            from dagster_aws.s3 import S3Resource

            bucket, _, prefix = self.url[5:].partition("/")
            if not bucket:
                raise ValueError(f"publish url must look like s3://bucket/prefix, not {self.url!r}")
            return S3Destination(S3Resource(endpoint_url=self.s3_endpoint).get_client(), bucket, prefix)
        if "://" in self.url:
            raise ValueError(f"publish url must be a folder or s3://bucket/prefix, not {self.url!r}")
        return FolderDestination(home.root / "published" if not self.url else self.url)


def check_settings() -> None:
    """Read every environment setting once, so that a command says which one cannot be read, in
    one line, before it starts anything (a run, or a code location that would fail to load)."""
    from skyassets.defs.automation import automation_interval
    from skyassets.fits import limits

    try:
        default_resources()
        limits.current()
        automation_interval()
    except SettingError:
        raise
    except (ValueError, OSError) as exc:  # a settings file that cannot be read, a limit that is not a number
        raise SettingError(" ".join(str(exc).split())) from None


def archive_resource() -> ArchiveResource:
    """The archive configured from the environment: the runs' and the command line's alike."""
    env = os.environ
    return ArchiveResource(
        url=env.get("SKYASSETS_MAST_URL") or EMULATOR,
        s3_endpoint=env.get("SKYASSETS_S3_ENDPOINT") or None,
        cloud=env_switch("SKYASSETS_CLOUD", True),
        emulator_image_size=env_number("SKYASSETS_EMULATOR_IMAGE_SIZE", 256, minimum=16),
        token=EnvVar("MAST_API_TOKEN") if env.get("MAST_API_TOKEN", "").strip() else None,
        daily_retries=env_number("SKYASSETS_DAILY_RETRIES", 7),
    )


def default_resources() -> dict[str, ConfigurableResource]:
    """Resources configured from the environment (see the README's configuration reference)."""
    env = os.environ
    return {
        "home": HomeResource(
            root=env.get(HOME_ENV) or ".skyassets", storage=env.get(STORAGE_ENV) or None,
            storage_endpoint=env.get(STORAGE_ENDPOINT_ENV) or None,
            cache_gb=env_number(CACHE_ENV, DEFAULT_CACHE_BYTES / (1 << 30), kind=float),
        ),
        "dask": DaskResource(scheduler=env.get("SKYASSETS_DASK_SCHEDULER") or ""),
        "watchlist": WatchlistResource(path=env.get(WATCHLIST_ENV) or DEFAULT_WATCHLIST),
        "archive": archive_resource(),
        "downloader": DownloaderResource(parallel=env_number("SKYASSETS_DOWNLOAD_PARALLEL", 4, minimum=1)),
        "composites": settings_from_file(CompositesResource, env["SKYASSETS_COMPOSITES"])
        if env.get("SKYASSETS_COMPOSITES") else CompositesResource(),
        "mosaics": settings_from_file(MosaicsResource, env["SKYASSETS_MOSAICS"])
        if env.get("SKYASSETS_MOSAICS") else MosaicsResource(),
        "publish": PublishResource(
            url=env.get("SKYASSETS_PUBLISH") or "",
            s3_endpoint=env.get("SKYASSETS_PUBLISH_S3_ENDPOINT") or None,
            public_url=env.get("SKYASSETS_PUBLISH_URL") or "",
        ),
        "landing": LandingResource(
            folder=env.get("SKYASSETS_LANDING") or "",
            s3_url=env.get("SKYASSETS_LANDING_S3") or None,
            s3_endpoint=env.get("SKYASSETS_LANDING_S3_ENDPOINT") or None,
        ),
    }
