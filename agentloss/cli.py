"""The ``agentloss`` command.

``agentloss run CONFIG.yaml`` trains a task with its agent; ``agentloss compare CONFIG.yaml`` trains
Fixed, Random and the agent from the same start and prints a table shaped like the paper's Table 1
(with ``crops.png`` and ``compare.png``); ``agentloss report DIR`` re-plots a run or comparison.
Any config field can be overridden (``--set train.total_iters=2000``), the agent and its backend too
(``--agent random``, ``--gguf model.gguf``, ``--openai-url http://host/v1 --openai-model name``).
``agentloss plot RUN_DIR`` draws a run's weight and score curves; ``agentloss show RUN_DIR`` prints
its stages as a table; ``agentloss prompt RUN_DIR --config agent.yaml`` prints the exact messages
an LLM agent would send for the run's next decision (a dry run: no model is loaded).
``agentloss run CONFIG --ask`` pauses at each stage end for a line of feedback typed by a person
(``--ask-timeout S``: go on without one after S seconds; docs/text-feedback.md).
``run``/``compare`` check every part first (``--check``: only that); an error a user can fix is one
``agentloss: error: ...`` line (a config error then lists its fields) and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .records import read_meta, read_records

if TYPE_CHECKING:
    from .tasks.config import RunConfig


def _cmd_plot(args: argparse.Namespace) -> int:
    from .plotting import plot_run

    out = plot_run(args.run_dir, args.output)
    print(out)
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    records = read_records(args.run_dir)
    meta = read_meta(args.run_dir)
    if not records:
        raise ValueError(f"no readable stage records in {args.run_dir}")
    arrows = {o["name"]: ("↑" if o["higher_is_better"] else "↓") for o in meta.get("objectives", [])}
    objectives = list(dict.fromkeys(k for r in records for k in r.scores))
    names = list(records[0].weights)
    # Time the training loop stood still at each stage end, and where it went (trials, waiting for an
    # asynchronous answer); "applied" is the step an asynchronous answer took effect.
    has = {k: any(k in r.timings for r in records) for k in ("stall_s", "trial_s", "wait_s")}
    asynchronous = any(r.applied_iteration is not None for r in records)
    extra = [h for h, on in (("stall s", has["stall_s"]), ("trials s", has["trial_s"]), ("wait s", has["wait_s"]),
                             ("applied", asynchronous)) if on]
    head = ["stage", "iter", ":".join(names)] + [f"{o}{arrows.get(o, '')}" for o in objectives] + extra + ["note"]
    rows = []
    for r in records:
        scores = ["n/a" if r.scores.get(o) is None else f"{r.scores[o]:.4f}" for o in objectives]
        times = [f"{r.timings[k]:.2f}" if k in r.timings else "" for k in ("stall_s", "trial_s", "wait_s") if has[k]]
        if asynchronous:
            times.append("" if r.applied_iteration is None else str(r.applied_iteration))
        d = r.decision
        note = r.fallback or ("; ".join([*([d.action] if d.action else []), *d.clipped]) if d is not None else "")
        note = "; ".join([note, *r.warnings]) if r.warnings and note else note or "; ".join(r.warnings)
        rows.append([str(r.stage), str(r.iteration), ":".join(f"{r.weights[n]:.4g}" for n in names), *scores, *times,
                     note])
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
    from .agents.factory import dry_run_messages

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


def _task_config(args: argparse.Namespace) -> RunConfig:
    from .tasks.config import load_config

    overrides = list(args.set or [])
    if args.out:
        overrides.append(f"out={args.out}")
    if args.agent:
        overrides.append(f"agent={{type: {args.agent}}}")
    backend = None
    if args.gguf:
        backend = {"type": "llama_cpp", "model_path": args.gguf, **({"n_threads": args.threads} if args.threads else {})}
    elif args.openai_url:
        backend = {"type": "openai", "base_url": args.openai_url, "model": args.openai_model}
    cfg = load_config(args.config, overrides)
    if backend is None:
        return cfg
    # The model serves every agent that uses one: ``agent`` and each of ``agents``; "backend: none" stays numbers only.
    from .agents.factory import agent_options

    data = cfg.model_dump(mode="json")
    for agent in [data["agent"], *data["agents"].values()]:
        if "backend" in agent_options(agent["type"]) and agent.get("backend") != "none":
            agent["backend"] = dict(backend)
    return load_config(data)


def _checked(cfg: RunConfig, methods: Sequence[str]) -> int:
    from .tasks.runner import check

    check(cfg, methods)
    print(f"ok: {', '.join(methods)} can run with this config (data, network, loss, objectives, agent and backend "
          f"checked; nothing trained)")
    return 0


def _with_person(cfg: RunConfig, timeout: float) -> RunConfig:
    """``cfg`` with a terminal feedback source named "person" added (``run --ask``), validated again."""
    from .tasks.config import load_config

    data = cfg.model_dump(mode="json")
    data["feedback"] = [*data["feedback"], {"type": "terminal", "name": "person", "timeout": timeout}]
    return load_config(data)


def _cmd_run(args: argparse.Namespace) -> int:
    from .tasks.runner import run

    cfg = _task_config(args)
    if args.ask_timeout is not None and not args.ask:
        raise ValueError("--ask-timeout goes with --ask (ask for a line of feedback at each stage end)")
    if args.ask_timeout is not None and not args.ask_timeout > 0:
        raise ValueError(f"--ask-timeout must be > 0 seconds, got {args.ask_timeout}")
    if args.ask:
        cfg = _with_person(cfg, 60.0 if args.ask_timeout is None else args.ask_timeout)
    if args.check:
        return _checked(cfg, ["agent"])
    result = run(cfg, progress=not args.no_progress, resume=not args.fresh)
    for name, scores in result.evaluation.items():
        print(f"{name}: " + "  ".join(f"{k}={v:.4f}" for k, v in scores.items()))
    print(f"run directory: {cfg.out_dir}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .tasks.report import format_table
    from .tasks.runner import compare

    if args.methods:  # through the config, so that its validation names what is allowed
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        args.set = [*(args.set or []), f"compare=[{', '.join(methods)}]"]
    cfg = _task_config(args)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()] if args.seeds else None
    except ValueError:
        raise ValueError(f"--seeds: expected comma-separated integers, got {args.seeds!r}") from None
    if args.check:
        return _checked(cfg, cfg.compare)
    comp = compare(cfg, progress=not args.no_progress, resume=not args.fresh, seeds=seeds)
    print()
    print(format_table(comp))
    print()
    for r in comp.runs:
        t = r.timings
        seed = f" seed {r.seed}" if len(comp.seeds) > 1 else ""
        print(f"{r.method:>6}{seed}: train {t.get('loop_train_s', 0):.0f} s, probe restore+score "
              f"{t.get('restore_s', 0) + t.get('score_s', 0):.1f} s, agent {t.get('agent_s', 0):.1f} s, "
              f"eval {t.get('eval_s', 0):.1f} s; final weights "
              + ":".join(f"{k}={v:.3g}" for k, v in (r.history[-1].weights if r.history else {}).items()))
    print(f"total {comp.wall_s:.0f} s; table, crops.png, compare.png and per-method curves in {cfg.out_dir}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .tasks.report import report

    print(report(args.dir))
    return 0


def _task_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML run config (see examples/configs/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config field, e.g. train.total_iters=2000 (repeatable)")
    p.add_argument("--out", help="output directory (default runs/<name>)")
    p.add_argument("--agent", help="agent type (fixed, random, llm, ...) replacing the config's agent")
    p.add_argument("--gguf", help="run the LLM agent on this GGUF chat model (llama.cpp)")
    p.add_argument("--openai-url", help="run the LLM agent on an OpenAI-compatible endpoint ($OPENAI_API_KEY)")
    p.add_argument("--openai-model", default="default", help="model name at --openai-url")
    p.add_argument("--threads", type=int, help="llama.cpp threads for --gguf")
    p.add_argument("--fresh", action="store_true", help="ignore checkpoints of an earlier interrupted run")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--check", action="store_true", help="check every part (data, network, loss, objectives, agent, "
                                                        "backend), then stop without training")


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
    run = sub.add_parser("run", help="train a task from a YAML config with its agent, then evaluate")
    _task_args(run)
    run.add_argument("--ask", action="store_true",
                     help="pause at each stage end for a line of feedback for the agent, typed here (Enter skips); "
                          "the restored probe images are saved in OUT/feedback_probe/ to look at")
    run.add_argument("--ask-timeout", type=float, metavar="S",
                     help="with --ask: seconds to wait for the line before going on without it (default 60)")
    run.set_defaults(func=_cmd_run)
    comp = sub.add_parser("compare", help="train Fixed, Random and the agent from one start; print a Table-1 table")
    _task_args(comp)
    comp.add_argument("--methods", help="comma-separated subset of fixed,random,agent (default: the config's compare)")
    comp.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2 (default: the config's seed); "
                                      "the table then shows the mean over seeds")
    comp.set_defaults(func=_cmd_compare)
    rep = sub.add_parser("report", help="re-plot a run or comparison directory and print its table")
    rep.add_argument("dir")
    rep.set_defaults(func=_cmd_report)
    return p


def _user_errors() -> tuple[type[BaseException], ...]:
    # What a user can fix (the message says how); anything else is a bug and keeps its traceback.
    from .backends.base import BackendError
    from .objectives import ObjectiveError

    return ValueError, OSError, BackendError, ObjectiveError  # ConfigError and CheckpointError are ValueErrors


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except _user_errors() as e:
        first, *rest = str(e).strip().splitlines() or [type(e).__name__]
        # One error line; a config error's fields follow it, indented.
        print("\n".join([f"agentloss: error: {first}", *(x if x.startswith(" ") else f"  {x}" for x in rest)]),
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resume = " (the same command resumes from the last stage end)" if args.command in ("run", "compare") else ""
        print(f"agentloss: interrupted{resume}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
