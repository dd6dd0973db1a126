"""The ``mmcompress`` command: prepare a catalog, serve the champion, roll back, find reports."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmcompress.errors import MMCompressError

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
DEFAULT_MODEL_NAME = "mmcompress-codec"


def _cmd_prepare(args: argparse.Namespace) -> int:
    from mmcompress.data.readers import read_catalog

    catalog = read_catalog(Path(args.catalog))
    out = catalog.save(Path(args.out))
    print(json.dumps({"catalog_dir": str(out), "n_items": len(catalog),
                      "modalities": {m: s.dim for m, s in catalog.schema.items()},
                      "coverage": {m: float(catalog.masks[m].mean()) for m in catalog.modality_names}},
                     indent=2))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from mmcompress.serve import ServiceSettings, run_server

    settings = ServiceSettings(exact_reader=args.exact_reader, exact_pool_bytes=args.exact_pool_bytes,
                               exact_reads_in_flight=args.exact_reads_in_flight,
                               exact_first_wave=args.exact_first_wave, exact_confidence=args.exact_confidence)
    run_server(port=args.port, model=args.model, host=args.host, tracking_uri=args.tracking_uri,
               model_name=args.model_name, settings=settings)
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from mmcompress.tracking.registry import rollback
    from mmcompress.tracking.store import resolve_tracking_uri

    new, old = rollback(resolve_tracking_uri(args.tracking_uri, Path.cwd()), args.model_name)
    print(f"champion is now {args.model_name} v{new} (verified)"
          + (f"; v{old} was demoted (tagged rolled_back)" if old else ""))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from mmcompress.tracking.reports import find_report
    from mmcompress.tracking.store import resolve_tracking_uri

    path = find_report(resolve_tracking_uri(args.tracking_uri, Path.cwd()), args.run_id)
    print(path)
    if args.open:
        import webbrowser

        webbrowser.open(Path(path).resolve().as_uri())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmcompress", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("prepare", help="turn your own catalog (.parquet) into an ItemCatalog")
    s.add_argument("--catalog", required=True, help="Parquet file: item_id + one list column per modality")
    s.add_argument("--out", default="data/catalog", help="output directory (default: data/catalog)")
    s.set_defaults(fn=_cmd_prepare)

    s = sub.add_parser("serve", help="answer similar-item queries over HTTP")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--model", default="champion", help="'champion' (MLflow registry) or a saved index dir")
    s.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI)
    s.add_argument("--model-name", default=DEFAULT_MODEL_NAME)
    s.add_argument("--exact-reader", choices=("mmap", "direct", "pread"), default=None,
                   help="how the exact vectors are read (default: as the index was saved): mmap through "
                        "the page cache, direct with O_DIRECT into the index's own buffer pool")
    s.add_argument("--exact-pool-bytes", type=int, default=None, help="buffer pool of the direct reader")
    s.add_argument("--exact-reads-in-flight", type=int, default=None, help="page reads one search issues at once")
    s.add_argument("--exact-first-wave", type=int, default=None,
                   help="read the exact stage in two waves, at least this many rows first (0: one wave)")
    s.add_argument("--exact-confidence", type=float, default=None, help="the two-wave bound's level in [0.5, 1]")
    s.set_defaults(fn=_cmd_serve)

    s = sub.add_parser("rollback", help="make the 'previous' model version champion again")
    s.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI)
    s.add_argument("--model-name", default=DEFAULT_MODEL_NAME)
    s.set_defaults(fn=_cmd_rollback)

    s = sub.add_parser("report", help="print the path of a run's HTML compression report")
    s.add_argument("run_id", nargs="?", default=None, help="MLflow run id (default: latest pipeline run)")
    s.add_argument("--open", action="store_true", help="open it in a browser")
    s.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI)
    s.set_defaults(fn=_cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (MMCompressError, LookupError, RuntimeError, FileNotFoundError) as e:
        print(f"mmcompress {args.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
