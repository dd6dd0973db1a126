"""Typed configuration of the cascade index, read from the ``index:`` section of params.yaml."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from numbers import Integral
from typing import Any

from mmcompress.errors import CodecError
from mmcompress.index.rerankbound import check_confidence
from mmcompress.index.rowstore import DTYPES as ROW_DTYPES
from mmcompress.index.rowstore import READER_KINDS


@dataclass
class CoarseStageConfig:
    """Stage 1: an ultra-compact code scanned for every candidate item.

    ``nlist == 0`` scans every item; ``nlist > 0`` routes each query to the ``nprobe`` closest
    of ``nlist`` k-means cells and scans only those (items are stored cell by cell).
    ``routing``: ``"code"`` keeps and scores the centroids in the coarse sign codec's own
    subspace (``r/d`` of the bytes and of the probing work; codecs without an orthonormal
    projection route in full space), ``"full"`` in the vectors' space.
    """

    codec: str = "BIN128"
    shortlist: int = 400
    nlist: int = 0
    nprobe: int = 16
    routing: str = "code"


@dataclass
class FineStageConfig:
    """Stage 2: a finer scoring of the coarse shortlist.

    ``codec``: a spec; ``"coarse"`` rescores the coarse codes themselves with the coarse codec's
    asymmetric scan (no extra bytes per item); None: the caller's codec (the pipeline passes the
    compress stage's choice). ``scoring``: ``"adc"`` (``codec.search`` over each query's
    shortlist) or ``"decode"`` (reconstruct, then dot products). ``enabled=False`` skips it.
    ``item_scales``: for sign codes scored by inner product, one byte per item rescales the
    code's estimate by how far the item's own vector points along its reconstruction (RaBitQ's
    correction), with the weight validation picks at build, or none where it does not help. Off
    by default: it ranked the real fused catalog closer to the exact order but not the
    benchmark's synthetic rows (see the serving notes). ``cell_prior``: with IVF routing and sign
    codes scored by tables, add a weight times the query's routing score of the item's cell to
    the estimate, the weight chosen on a sample at build (none where it does not rank better;
    :mod:`mmcompress.index.cellprior`).
    """

    codec: str | None = None
    shortlist: int = 50
    enabled: bool = True
    scoring: str = "adc"
    item_scales: bool = False
    cell_prior: bool = True


@dataclass
class ExactStageConfig:
    """Stage 3's store: how the float32 rows of the fine shortlist are read
    (:mod:`mmcompress.index.rowstore`).

    ``reader``: ``"mmap"`` memory-maps the row file (the page cache keeps what was read, so a
    served index is warm after its first queries and its reads do not show as disk reads);
    ``"direct"`` reads it as a disk-resident index does, with ``O_DIRECT`` into the index's own
    buffer pool of ``pool_bytes`` (0: every page from disk), falling back to buffered reads that
    drop the page cache where the filesystem refuses ``O_DIRECT``; ``"pread"`` forces that
    fallback. ``reads_in_flight``: page reads one search keeps in flight (random 4 KiB reads
    are latency bound: more in flight, more reads per second); ``O_DIRECT`` reads go through
    kernel AIO where the kernel takes it, else through as many threads. Only a store on disk (built
    with ``exact_vectors_path``, or loaded) is read this way; one built in memory stays there.

    ``first_wave``: 0 reads the whole fine shortlist at once; ``n > 0`` reads in two waves:
    first the rows whose calibrated bound (fitted at build, :mod:`mmcompress.index.rerankbound`,
    at the bound's ``confidence``) reaches the predicted k-th best exact score, and at least the
    ``n`` best-estimated; then only the other rows whose bound reaches the k-th best exact score
    so far: fewer pages for a longer shortlist, and for most queries one round of reads.

    ``dtype``: the values the row file holds, ``"float32"`` or ``"float16"`` (half the file and
    twice the rows per 4 KiB page; rows are widened back to float32 to be scored, so the rerank
    ranks by the float16 values: on the Debian text vectors the exact top-10 of the float16 rows
    holds 0.9997 of the float32 top-10).

    ``layout``: the order rows are stored in. ``"locality"`` (:mod:`mmcompress.index.locality`)
    puts near items on the same page, inside each IVF cell where there are cells, so a query's
    shortlist shares pages (serving benchmark, Debian full-scan cascade: 27.6 pages a query
    instead of 31.2 in catalog order); ``"insertion"`` keeps the order rows were given in
    (sorted by cell).
    """

    reader: str = "mmap"
    pool_bytes: int = 0
    reads_in_flight: int = 64
    first_wave: int = 0
    confidence: float = 0.99
    dtype: str = "float32"
    layout: str = "locality"


@dataclass
class CascadeConfig:
    """All stages; ``exact_rerank`` rescores the fine shortlist with float32 vectors on disk,
    read as ``exact`` says."""

    coarse: CoarseStageConfig = field(default_factory=CoarseStageConfig)
    fine: FineStageConfig = field(default_factory=FineStageConfig)
    exact_rerank: bool = True
    exact: ExactStageConfig = field(default_factory=ExactStageConfig)
    metric: str = "ip"
    cache_bytes: int = 4_000_000
    cache_policy: str = "tinylfu"
    # full-space IVF centroids and sign maps not shared with a codec in float16 (code-space
    # centroids take the precision of the codec's projection)
    half_precision_tables: bool = False
    compiled_scan: bool = True  # binary coarse + sign-table fine stages in one compiled pass
    train_rows: int = 100_000
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.coarse, Mapping):
            self.coarse = _from_mapping(CoarseStageConfig, self.coarse, "index.coarse")
        if isinstance(self.fine, Mapping):
            self.fine = _from_mapping(FineStageConfig, self.fine, "index.fine")
        if isinstance(self.exact, Mapping):
            self.exact = _from_mapping(ExactStageConfig, self.exact, "index.exact")
        self.validate()

    def validate(self) -> None:
        if self.metric not in ("ip", "l2"):
            raise CodecError(f"index.metric must be 'ip' or 'l2'; found {self.metric!r}")
        if self.coarse.shortlist < 1:
            raise CodecError(f"index.coarse.shortlist must be >= 1; found {self.coarse.shortlist}")
        if self.fine.shortlist < 1:
            raise CodecError(f"index.fine.shortlist must be >= 1; found {self.fine.shortlist}")
        if self.coarse.nlist < 0 or self.coarse.nprobe < 1:
            raise CodecError(f"index.coarse needs nlist >= 0 and nprobe >= 1; found "
                             f"nlist={self.coarse.nlist}, nprobe={self.coarse.nprobe}")
        if self.coarse.routing not in ("code", "full"):
            raise CodecError(f"index.coarse.routing must be 'code' or 'full'; found {self.coarse.routing!r}")
        if self.fine.scoring not in ("adc", "decode"):
            raise CodecError(f"index.fine.scoring must be 'adc' or 'decode'; found {self.fine.scoring!r}")
        check_exact_reader(self.exact.reader, self.exact.pool_bytes, self.exact.reads_in_flight,
                           names=("index.exact.reader", "index.exact.pool_bytes", "index.exact.reads_in_flight"))
        check_waves(self.exact.first_wave, self.exact.confidence, names=("index.exact.first_wave",
                                                                        "index.exact.confidence"))
        if self.exact.dtype not in ROW_DTYPES:
            raise CodecError(f"index.exact.dtype must be one of {list(ROW_DTYPES)}; found {self.exact.dtype!r}")
        if self.exact.layout not in ("locality", "insertion"):
            raise CodecError(f"index.exact.layout must be 'locality' or 'insertion'; found {self.exact.layout!r}")
        if self.cache_bytes < 0:
            raise CodecError(f"index.cache_bytes must be >= 0; found {self.cache_bytes}")
        if self.cache_policy not in ("tinylfu", "lru"):
            raise CodecError(f"index.cache_policy must be 'tinylfu' or 'lru'; found {self.cache_policy!r}")

    @classmethod
    def from_params(cls, section: Mapping[str, Any]) -> CascadeConfig:
        """Build from the ``index:`` section of params.yaml; unknown keys are an error."""
        return _from_mapping(cls, section, "index")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_exact_reader(reader: Any, pool_bytes: Any, reads_in_flight: Any, *,
                       names: tuple[str, str, str], allow_none: bool = False) -> None:
    """Refuse an exact-store reading setting that :func:`~mmcompress.index.rowstore.open_row_store`
    would only fail on later (when the index loads in a service), naming the offending key.
    ``names``: how the caller spells the three keys (``index.exact.*`` in params.yaml, or the
    service's settings); ``allow_none``: None means "keep what the index has" and passes."""
    if not (reader is None and allow_none) and reader not in READER_KINDS:
        raise CodecError(f"{names[0]} must be one of {list(READER_KINDS)}; found {reader!r}")
    for name, value, low in ((names[1], pool_bytes, 0), (names[2], reads_in_flight, 1)):
        if value is None and allow_none:
            continue
        if isinstance(value, bool) or not isinstance(value, Integral):
            raise CodecError(f"{name} must be an integer >= {low}; found {value!r} ({type(value).__name__})")
        if value < low:
            raise CodecError(f"{name} must be >= {low}; found {value}")


def check_waves(first_wave: Any, confidence: Any, *, names: tuple[str, str], allow_none: bool = False) -> None:
    """Refuse a two-wave exact stage setting that is not a count >= 0 and a confidence level;
    ``allow_none``: None means "keep what the index has" and passes."""
    if not (first_wave is None and allow_none) and (
            isinstance(first_wave, bool) or not isinstance(first_wave, Integral) or first_wave < 0):
        raise CodecError(f"{names[0]} must be an integer >= 0; found {first_wave!r}")
    if not (confidence is None and allow_none):
        check_confidence(confidence, names[1])


def _from_mapping(cls: type, section: Mapping[str, Any], where: str) -> Any:
    if not isinstance(section, Mapping):
        raise CodecError(f"{where} must be a mapping; found {type(section).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise CodecError(f"{where}: unknown keys {unknown}; expected some of {sorted(known)}")
    return cls(**dict(section))
