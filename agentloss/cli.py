"""The ``agentloss`` command.

``agentloss plot RUN_DIR`` draws a run's weight and score curves; ``agentloss show RUN_DIR`` prints
its stages as a table; ``agentloss prompt RUN_DIR --config agent.yaml`` prints the exact messages
an LLM agent would send for the run's next decision (a dry run: no model is loaded).
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


def load_config(path: str | None) -> dict:
    """A YAML (or JSON) file; an ``agent:`` section is used when present."""
    if path is None:
        return {}
    import yaml

    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return dict(data.get("agent", data))


def _cmd_prompt(args: argparse.Namespace) -> int:
    from .prompts import dry_run_messages

    config = load_config(args.config)
    if args.needs:
        config["needs"] = args.needs
    messages = dry_run_messages(config, args.run_dir, feedback=args.feedback or None)
    if args.json:
        import json

        print(json.dumps(messages, indent=2, ensure_ascii=False))
    else:
        for m in messages:
            print(f"===== {m['role']} =====")
            print(m["content"])
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
    prompt = sub.add_parser("prompt", help="print the messages an LLM agent would send next (dry run, no model)")
    prompt.add_argument("run_dir")
    prompt.add_argument("--config", help="agent config YAML (needs, templates, history_window, backend...)")
    prompt.add_argument("--needs", help="the goal in words (overrides the config's needs)")
    prompt.add_argument("--feedback", action="append", help="a person's note to include (repeatable)")
    prompt.add_argument("--json", action="store_true", help="print the messages as JSON")
    prompt.set_defaults(func=_cmd_prompt)
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
