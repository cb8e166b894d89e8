"""`ganforge upscale|translate|generate ...`: see `ganforge --help` and the README's first section."""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path

from .api import JobClient, Retry
from .files import Task, plan
from .run import Outcome, run_all

EXAMPLES = """examples:
  ganforge upscale photos/ out/ --model srresnet-x4 --url http://host:3000 --concurrency 4
  ganforge translate holiday.mp4 holiday-colour.mp4 --model colorize
  ganforge generate sneakers/ --model fashion --label Sneaker --seed 1 --count 10
"""


def common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="the model (default: the server's default for the endpoint)")
    parser.add_argument("--format", choices=["png", "jpeg", "webp"], default="png", help="images out [png]")
    parser.add_argument("--quality", type=int, help="JPEG / WebP quality")
    parser.add_argument("--url", default=os.environ.get("GANFORGE_URL", "http://127.0.0.1:3000"),
                        help="the server [$GANFORGE_URL or http://127.0.0.1:3000]")
    parser.add_argument("--token", default=os.environ.get("GANFORGE_TOKEN"),
                        help="sent as 'Authorization: Bearer' [$GANFORGE_TOKEN]")
    parser.add_argument("--concurrency", type=int, default=2, help="jobs at once [2]")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between status checks, at most [1]")
    parser.add_argument("--retries", type=int, default=10, help="tries of a call answered 429 / 503 [10]")
    parser.add_argument("--overwrite", action="store_true", help="redo files whose output exists")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bars [on when stderr is a terminal]")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="ganforge", description="Send images, folders and videos to a ganforge "
                                  "server; results keep the folder tree.", epilog=EXAMPLES,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="endpoint", required=True)
    for name, what in [("upscale", "make images and videos larger"),
                       ("translate", "turn images and videos into another domain (same size)")]:
        sub = commands.add_parser(name, help=what)
        sub.add_argument("input", type=Path, help="an image, a video, a .zip of images (one batch job: a .zip of "
                         "results and manifest.json back), or a folder of them (walked recursively)")
        sub.add_argument("output", help="a file for one input (a folder when it exists or ends with /), "
                         "else a folder (the tree is kept)")
        common(sub)
        sub.add_argument("--video-format", choices=["mp4", "webm"], default="mp4", help="videos out [mp4]")
        if name == "upscale":
            sub.add_argument("--scale", type=float, help="default: the model's own")
        else:
            sub.add_argument("--direction", choices=["a2b", "b2a"], help="CycleGAN models")
    gen = commands.add_parser("generate", help="new images from a generator")
    gen.add_argument("output", type=Path, help="a folder (or a file with --count 1)")
    common(gen)
    gen.add_argument("--label", help="class name or index")
    gen.add_argument("--n", type=int, default=1, help="images per file (a grid when > 1) [1]")
    gen.add_argument("--seed", type=int, default=0, help="the first seed [0]")
    gen.add_argument("--count", type=int, default=1, help="files, seeds seed .. seed+count-1 [1]")
    return top


def generate_tasks(args: argparse.Namespace) -> list[Task]:
    ext = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}[args.format]
    single = args.count == 1 and args.output.suffix
    tasks = []
    for seed in range(args.seed, args.seed + args.count):
        params = {"model": args.model, "label": args.label, "n": args.n, "seed": seed, "format": args.format,
                  "quality": args.quality}
        params = {k: v for k, v in params.items() if v is not None}
        name = f"{args.model or 'image'}-{args.label or 'any'}-seed{seed}{ext}"
        target = args.output if single else args.output / name
        tasks.append(Task(None, target, target.name, None, params))
    return tasks


def image_tasks(args: argparse.Namespace) -> list[Task]:
    params = {"model": args.model, "quality": args.quality, "scale": getattr(args, "scale", None),
              "direction": getattr(args, "direction", None)}
    params = {k: v for k, v in params.items() if v is not None}
    if not args.input.exists():
        raise ValueError(f"{args.input}: no such file or folder")
    into_folder = args.output.endswith(("/", os.sep)) or Path(args.output).is_dir()
    return plan(args.input, Path(args.output), params, args.format, args.video_format, into_folder)


def report(outcome: Outcome, out=None) -> int:
    out = out or sys.stderr
    print(f"{len(outcome.done)} done, {len(outcome.skipped)} already there, {len(outcome.failed)} failed",
          file=out)
    for task, message in outcome.failed:
        print(f"FAILED {task.label}: {message}", file=out)
    if outcome.stopped:
        print("stopped: run the same command again to resume", file=out)
        return 130
    return 1 if outcome.failed else 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        tasks = generate_tasks(args) if args.endpoint == "generate" else image_tasks(args)
    except ValueError as exc:
        print(f"ganforge: {exc}", file=sys.stderr)
        return 2
    if not tasks:
        print(f"ganforge: no images or videos under {args.input}", file=sys.stderr)
        return 2
    client = JobClient(args.url, args.token, Retry(attempts=max(1, args.retries)), poll_s=args.poll,
                       stop=threading.Event())
    try:
        outcome = run_all(client, tasks, args.endpoint, args.concurrency, args.progress, args.overwrite)
    finally:
        client.close()
    return report(outcome)


if __name__ == "__main__":
    sys.exit(main())
