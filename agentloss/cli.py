"""The ``agentloss`` command.

``agentloss plot RUN_DIR`` draws a run's weight and score curves; ``agentloss show RUN_DIR`` prints
its stages as a table.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .records import read_meta, read_records


def _cmd_plot(args: argparse.Namespace) -> int:
    from .plotting import plot_run

    out = plot_run(args.run_dir, args.output)
    print(out)
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    records = read_records(args.run_dir)
    meta = read_meta(args.run_dir)
    if not records:
        print(f"no stages recorded in {args.run_dir}", file=sys.stderr)
        return 1
    arrows = {o["name"]: ("↑" if o["higher_is_better"] else "↓") for o in meta.get("objectives", [])}
    objectives = list(dict.fromkeys(k for r in records for k in r.scores))
    names = list(records[0].weights)
    head = ["stage", "iter", ":".join(names)] + [f"{o}{arrows.get(o, '')}" for o in objectives] + ["note"]
    rows = []
    for r in records:
        scores = ["n/a" if r.scores.get(o) is None else f"{r.scores[o]:.4f}" for o in objectives]
        note = r.fallback or ("; ".join(r.decision.get("clipped", [])) if r.decision else "")
        rows.append([str(r.stage), str(r.iteration), ":".join(f"{r.weights[n]:.4g}" for n in names), *scores, note])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agentloss", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    plot = sub.add_parser("plot", help="plot a run's weight and score curves to PNG")
    plot.add_argument("run_dir")
    plot.add_argument("-o", "--output", default=None, help="PNG path (default RUN_DIR/curves.png)")
    plot.set_defaults(func=_cmd_plot)
    show = sub.add_parser("show", help="print a run's stages as a table")
    show.add_argument("run_dir")
    show.set_defaults(func=_cmd_show)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError) as e:
        print(f"agentloss: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
