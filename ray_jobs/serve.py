"""Deploy the text-to-sign service (Ray Serve) on a running cluster, then exit; it keeps serving.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python ray_jobs/serve.py \\
        --run /abs/path/storage/finetune
    python ray_jobs/serve.py --config paper --run s3://madis-runs/finetune --port 8000
    python ray_jobs/serve.py --checkpoint s3://madis-runs/finetune/checkpoint_00012000

Set up: the model is the checkpoint named by ``{run}/best.json`` (the eval fleet's registry),
polled every ``serve.poll_s`` seconds and swapped in without dropping requests when it changes;
before the fleet has written best.json, the run's newest complete checkpoint. ``--checkpoint``
serves one fixed checkpoint instead. The run defaults to ``serve.run``, else the fine-tuning run
(``{train.storage_path}/{train_finetune.run_name}``). Serve: HTTP on ``serve.host:serve.port``
(127.0.0.1:8000 by default), replicas autoscaled on queue length, requests batched (section
``serve``). Serve's controller is detached, so the application outlives this job; redeploying
replaces it in place, ``serve shutdown`` (or ``serve.delete(app_name)``) removes it.

With ``--working-dir``, give local paths absolute: the job runs in a copy of the directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import urllib.request

from madis.config import load_tree, section
from madis.serve.config import ServeConfig
from madis.serve.source import serve_target


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="sections used: serve (and train, train_finetune for the "
                                       "default run)")
    p.add_argument("--config", default="cpu-tiny",
                   help="profile name (cpu-tiny, paper) or YAML path (default: %(default)s)")
    p.add_argument("--run", default=None, metavar="URL",
                   help="run directory whose best.json names the checkpoint (serve.run)")
    p.add_argument("--checkpoint", default=None, metavar="URL",
                   help="serve this checkpoint (or export) instead; not polled")
    p.add_argument("--host", default=None, help="HTTP host (serve.host, default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (serve.port)")
    p.add_argument("overrides", nargs="*", metavar="SECTION.FIELD=VALUE",
                   help="config overrides, e.g. serve.max_replicas=4 serve.max_batch_size=16")
    return p.parse_args(argv)


def wait_healthy(url: str, timeout_s: float = 60.0) -> dict:
    """``GET {url}healthz`` until it answers 200; returns its JSON.

    Raises:
        TimeoutError: no healthy answer within ``timeout_s``.
    """
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "healthz", timeout=10) as res:
                return json.load(res)
        except OSError as exn:
            last = exn
            time.sleep(0.5)
    raise TimeoutError(f"{url}healthz did not answer within {timeout_s:.0f} s ({last})")


def main(argv=None) -> dict:
    from madis.serve.app import deploy

    args = parse_args(argv)
    tree = load_tree(args.config, args.overrides)
    cfg = section(tree, "serve", ServeConfig)
    cfg = dataclasses.replace(cfg, **{k: v for k, v in (("host", args.host), ("port", args.port))
                                      if v is not None})
    run, checkpoint = serve_target(tree, args.run, args.checkpoint)
    url = deploy(cfg, run, checkpoint)
    health = wait_healthy(url)
    report = {"url": url, "app": cfg.app_name, "run": run, "checkpoint": checkpoint,
              "serving": health}
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
