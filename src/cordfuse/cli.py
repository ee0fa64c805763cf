"""``cordfuse <verb>``: argument parsing, progress and error reporting; no logic of its own.

Every verb is a function ``cmd_<verb>(args) -> int`` and :func:`main` takes ``argv``, so tests call
the CLI in-process. A :class:`~cordfuse.errors.CordfuseError` (a user mistake: bad file, bad
option) is printed as one line ``cordfuse: error: ...`` with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from cordfuse import __version__
from cordfuse.errors import CordfuseError


def _progress(total: int, desc: str):
    """A tqdm bar on stderr (hidden when stderr is not a terminal); returns an update callback."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="subject", disable=None, file=sys.stderr)

    def update(name: str) -> None:
        bar.set_postfix_str(name)
        bar.update(1)
        if bar.n >= total:
            bar.close()

    return update


# ---------------------------------------------------------------------------------------------
# synth


def _is_synth_dataset(path: Path) -> bool:
    try:
        description = json.loads((path / "dataset_description.json").read_text())
    except (OSError, ValueError):
        return False
    return any(g.get("Name") == "cordfuse synth" for g in description.get("GeneratedBy", []))


def prepare_output_folder(out: Path, *, overwrite: bool) -> None:
    """Refuse to write into a non-empty folder unless ``overwrite`` and it is a synth dataset."""
    if not out.exists() or not any(out.iterdir()):
        return
    if not overwrite:
        raise CordfuseError(
            f"{out}: folder exists and is not empty (use --overwrite to replace it)"
        )
    if not _is_synth_dataset(out):
        raise CordfuseError(
            f"{out}: not a cordfuse synthetic dataset; refusing to delete it even with --overwrite"
        )
    shutil.rmtree(out)


def cmd_synth(args: argparse.Namespace) -> int:
    from cordfuse.synth import write_cohort

    cohorts = [c.strip() for c in args.cohorts.split(",") if c.strip()]
    if args.subjects < 1:
        raise CordfuseError("--subjects must be at least 1")
    if not cohorts:
        raise CordfuseError("--cohorts needs at least one name, e.g. A,B,C")
    out = Path(args.out)
    prepare_output_folder(out, overwrite=args.overwrite)
    start = time.perf_counter()
    write_cohort(
        out,
        subjects=args.subjects,
        seed=args.seed,
        cohorts=cohorts,
        qc=args.qc,
        progress=_progress(args.subjects, "synth"),
    )
    elapsed = time.perf_counter() - start
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(
        f"Wrote {args.subjects} synthetic subjects (cohorts {', '.join(cohorts)}, "
        f"seed {args.seed}) to {out} in {elapsed:.1f} s ({size / 1e6:.1f} MB)."
    )
    if args.qc:
        print(f"QC pictures: {out / 'derivatives' / 'synth' / 'qc'}")
    return 0


# ---------------------------------------------------------------------------------------------
# check


def run_check(dataset: str | Path, *, mapping: str | None = None, as_json: bool = False) -> int:
    from cordfuse.check import check_dataset
    from cordfuse.dataset import discover
    from cordfuse.sequences import load_rules

    ds = discover(dataset, rules=load_rules(mapping))
    report = check_dataset(ds, progress=_progress(len(ds.subjects), "check"))
    print(json.dumps(report.to_json(), indent=2) if as_json else report.format_text())
    return 0 if report.ok else 1


def cmd_check(args: argparse.Namespace) -> int:
    return run_check(args.dataset, mapping=args.mapping, as_json=args.json)


# ---------------------------------------------------------------------------------------------
# demo


def cmd_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    data = out / "data"
    print(f"[1/2] Synthetic cohort: {args.subjects} subjects, cohorts A, B, C -> {data}")
    prepare_output_folder(data, overwrite=True)
    cmd_synth(
        argparse.Namespace(
            out=str(data),
            subjects=args.subjects,
            seed=args.seed,
            cohorts="A,B,C",
            qc=True,
            overwrite=True,
        )
    )
    print(f"\n[2/2] Checking {data}")
    status = run_check(data)
    print(f"\nDemo finished: dataset and QC pictures under {out.resolve()}")
    return status


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cordfuse",
        description="Multi-sequence MS lesion segmentation in spinal cord MRI.",
    )
    parser.add_argument("--version", action="version", version=f"cordfuse {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    synth = verbs.add_parser(
        "synth",
        help="write a synthetic multi-sequence BIDS cohort",
        description="Write a realistic synthetic BIDS cohort with ground truth.",
    )
    synth.add_argument("out", help="output folder (created)")
    synth.add_argument("--subjects", type=int, default=10, help="number of subjects (default 10)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--cohorts", default="A,B,C", help="cohort names, assigned in turn (A,B,C)")
    synth.add_argument("--qc", action="store_true", help="also write QC pictures per subject")
    synth.add_argument(
        "--overwrite", action="store_true", help="replace an existing synthetic dataset in OUT"
    )
    synth.set_defaults(func=cmd_synth)

    check = verbs.add_parser(
        "check",
        help="availability matrix and problems of a BIDS dataset",
        description="Report the subjects x sequences matrix and every problem; "
        "exit status 0 only when nothing is wrong.",
    )
    check.add_argument("dataset", help="BIDS dataset folder")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument("--mapping", help="JSON/YAML file overriding the sequence matching rules")
    check.set_defaults(func=cmd_check)

    demo = verbs.add_parser("demo", help="run the whole pipeline on a small synthetic cohort")
    demo.add_argument("out", nargs="?", default="cordfuse-demo", help="output folder")
    demo.add_argument("--subjects", type=int, default=24, help="subjects (default 24)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except CordfuseError as exc:
        print(f"cordfuse: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cordfuse: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
