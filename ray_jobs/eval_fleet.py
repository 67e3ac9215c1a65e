"""Validate every new checkpoint of a training run beside it: the eval fleet (paper 4's metrics).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python ray_jobs/eval_fleet.py                       # watches the cpu-tiny finetune run
    python ray_jobs/eval_fleet.py --config paper --job finetune --storage s3://madis-runs \\
        fleet.actors=8 fleet.gpus_per_actor=0.5

Set up: the run ``{storage}/{train_<job>.run_name}`` (or ``--run-url``); the SiCLIP evaluator from
``fleet.siclip`` (``auto``: the newest complete checkpoint of the ``train_siclip`` run in the same
storage; none: R@k skipped, said in the log); ``fleet.actors`` Ray actors. Loop: poll the run for
the newest COMPLETE checkpoint, decode the validation texts over the actors, compute DTW-JPE,
SiBLEU and SiCLIP R@k, write TensorBoard to ``{run}/tensorboard/fleet`` under the checkpoint's
step, update ``{run}/best.json`` (see :mod:`madis.fleet`). Stop: ``--until-step``,
``--idle-timeout``, or when the training run writes its final report (``fleet.stop_when_run_ends``).
Prints the summary as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging

from madis import runs
from madis.config import load_tree, section
from madis.fleet import FleetConfig
from madis.fleet.fleet import EvalFleet


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="sections used: fleet, train, train_<job>, train_siclip")
    p.add_argument("--config", default="cpu-tiny", help="profile name or YAML path")
    p.add_argument("--job", default=None, help="training job whose run is watched (fleet.job)")
    p.add_argument("--storage", default=None, help="run storage (train.storage_path)")
    p.add_argument("--run-url", default=None, help="the run directory itself (overrides both)")
    p.add_argument("--actors", type=int, default=None, help="fleet.actors")
    p.add_argument("--until-step", type=int, default=None, help="fleet.until_step")
    p.add_argument("--idle-timeout", type=float, default=None, help="fleet.idle_timeout_s")
    p.add_argument("overrides", nargs="*", metavar="SECTION.FIELD=VALUE",
                   help="config overrides, e.g. fleet.samplers=[utc,vanilla]")
    return p.parse_args(argv)


def fleet_config(tree, args: argparse.Namespace) -> FleetConfig:
    """Section ``fleet`` with the command-line options on top.

    Raises:
        ConfigError: a bad value.
    """
    cfg = section(tree, "fleet", FleetConfig)
    changes = {name: getattr(args, opt) for opt, name in (
        ("job", "job"), ("actors", "actors"), ("until_step", "until_step"),
        ("idle_timeout", "idle_timeout_s")) if getattr(args, opt, None) is not None}
    return dataclasses.replace(cfg, **changes)


def resolve_siclip(tree, cfg: FleetConfig, storage: str | None) -> str | None:
    """The SiCLIP export URL of ``fleet.siclip`` (see the module doc), or None."""
    if not cfg.siclip:
        return None
    if cfg.siclip.lower() != "auto":
        return cfg.siclip
    try:
        return runs.newest_export(runs.job_run(tree, "siclip", storage=storage))
    except FileNotFoundError as exn:
        logging.getLogger(__name__).warning("fleet.siclip=auto: %s (SiCLIP)", exn)
        return None


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    tree = load_tree(args.config, args.overrides)
    cfg = fleet_config(tree, args)
    url = (runs.absolute(args.run_url, "--run-url") if args.run_url
           else runs.job_run(tree, cfg.job, storage=args.storage))
    if not (cfg.stop_when_run_ends or cfg.until_step or cfg.idle_timeout_s):
        logging.getLogger(__name__).info("no stop condition: the fleet runs until stopped")
    summary = EvalFleet(cfg, url, siclip_url=resolve_siclip(tree, cfg, args.storage)).run()
    report = {"run": url, **dataclasses.asdict(summary)}
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
