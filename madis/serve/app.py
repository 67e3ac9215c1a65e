"""The Ray Serve application: text -> sign tokens, motion, ``.pose`` or GIF over HTTP.

One deployment, :class:`TextToSign`, behind a FastAPI ingress::

    GET  /            demo page (text box, language, the animation drawn on a canvas)
    GET  /healthz     {"status": "ok", "checkpoint_step": ...}
    GET  /info        model, checkpoint (step, best.json metric and metrics), languages, limits
    POST /generate    {"text", "lang", "num_steps"?, "sampler"?: "utc" | "vanilla",
                       "threshold"?, "pin"?: {"body" | "lhand" | "rhand": [id | null, ...]}}
                      ?format=json (default) | pose | gif; ?screen=1 adds front-view joints
    POST /generate/stream   the same body; text/event-stream: one ``event: stage`` per UTC stage
                      (tokens so far, null where masked, and their motion), then ``event: done``
                      with the /generate JSON, or ``event: error``; ?screen=1 as above

Each replica loads the checkpoint :func:`~madis.serve.source.choose_model` picks, decodes
requests in batches (``@serve.batch``: up to ``serve.max_batch_size`` requests, waiting at most
``serve.batch_wait_s``) on worker threads (``serve.concurrent_batches`` batches in flight,
taking turns one UTC stage at a time, :mod:`madis.serve.stage_gate`), and polls ``best.json`` on another thread: a new
best checkpoint is loaded beside the serving one and swapped in by one reference assignment, so
the batch in flight finishes on the old model and the next one runs on the new (no request is
dropped or answered by a half-loaded model). Replicas autoscale on queue length between
``serve.min_replicas`` and ``serve.max_replicas``.
"""

import asyncio
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from importlib import resources
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from ray import serve

from madis.config import from_dict, to_dict
from madis.serve.config import ServeConfig
from madis.serve.generator import (
    GenerationResult,
    LoadedModel,
    render_gif,
    render_pose,
    result_json,
    rounded_timings,
    stage_json,
)
from madis.serve.requests import (
    GenerateRequest,
    RequestError,
    parse_generate,
    parse_output_format,
)
from madis.serve.source import ModelChoice, choose_model
from madis.serve.stage_gate import StageGate

log = logging.getLogger("ray.serve")
DEPLOYMENT = "TextToSign"

# No ``from __future__ import annotations`` in this module: FastAPI reads the route signatures
# of the Serve-wrapped methods at run time, and string annotations there do not resolve.
api = FastAPI(title="MaDiS text-to-sign", docs_url=None, redoc_url=None)


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(RequestError(status, code, message).to_json(), status_code=status)


@api.exception_handler(RequestError)
async def _request_error(_: Request, exn: RequestError) -> JSONResponse:
    return JSONResponse(exn.to_json(), status_code=exn.status)


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exn: RequestValidationError) -> JSONResponse:
    where = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}"
                      for e in exn.errors())
    return _error(422, "bad_query", where or "invalid query parameters")


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exn: StarletteHTTPException) -> JSONResponse:
    # routing's own refusals (404 unknown path, 405 wrong method) in the service's error shape
    codes = {404: "not_found", 405: "method_not_allowed"}
    return _error(exn.status_code, codes.get(exn.status_code, "http_error"), str(exn.detail))


@api.exception_handler(FileNotFoundError)
async def _missing_file(_: Request, exn: FileNotFoundError) -> JSONResponse:
    # a file the node must hold, e.g. the licensed SMPL-X model for ?format=gif/pose or screen=1;
    # its path goes to the replica's log, not to clients
    log.error("request needs a file this node lacks: %s", exn)
    return _error(503, "unavailable", "this output needs a model file that the serving node "
                  "lacks (e.g. the licensed SMPL-X model; see README, Troubleshooting); "
                  "JSON tokens and motion still work")


@api.exception_handler(Exception)
async def _internal_error(_: Request, exn: Exception) -> JSONResponse:
    log.exception("request failed")
    return _error(500, "internal", f"{type(exn).__name__}: {exn}")


def sse(event: str, data: bytes) -> bytes:
    """One server-sent event (the data is one line of JSON)."""
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


async def stream_events(task: asyncio.Future, views: asyncio.Queue, fmt, screen: bool,
                        received: float):
    """The body of ``POST /generate/stream``: an ``event: stage`` per view put on ``views``
    while ``task`` (the request's batch) runs, then ``event: done`` with its result's JSON, or
    ``event: error`` (``{"error": {code, message}}``) when it fails or is refused."""
    try:
        while True:
            getter = asyncio.ensure_future(views.get())
            done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                break
            yield sse("stage", stage_json(getter.result(), fmt, screen=screen))
        while not views.empty():  # stages queued before the batch returned
            yield sse("stage", stage_json(views.get_nowait(), fmt, screen=screen))
        result = task.result()
        if isinstance(result, RequestError):
            raise result
        result.timings["total_ms"] = 1e3 * (time.perf_counter() - received)
        yield sse("done", result_json(result, fmt, screen=screen))
    except RequestError as exn:
        yield sse("error", json.dumps(exn.to_json()).encode())
    except Exception as exn:  # noqa: BLE001 - the status line is sent: report in-stream
        log.exception("stream failed")
        yield sse("error", json.dumps(RequestError(500, "internal", f"{type(exn).__name__}: "
                                                                    f"{exn}").to_json()).encode())


def page_html() -> str:
    """The demo page (``madis/serve/static/index.html``): plain HTML + JS, no build step."""
    return resources.files("madis.serve").joinpath("static/index.html").read_text("utf-8")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit`` bytes, whatever the
    ``Content-Length`` header claims (a chunked body has none)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, "body_too_large", f"the request body has {declared} bytes; the "
                                                  f"limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, "body_too_large", f"the request body passes {limit} bytes, "
                                                      f"the limit")
        chunks.append(chunk)
    return b"".join(chunks)


@serve.deployment(name=DEPLOYMENT)
@serve.ingress(api)
class TextToSign:
    """A replica of the text-to-sign service (see the module doc for the routes).

    Args:
        serve_config: the ``serve`` section as a dict (``to_dict(ServeConfig)``).
        run_url: run directory whose ``best.json`` names the checkpoint (polled).
        checkpoint: a fixed checkpoint or export instead (not polled).
    Raises:
        FileNotFoundError: nothing to serve. ValueError: a bad best.json or no languages.
    """

    def __init__(self, serve_config: dict, run_url: str | None = None,
                 checkpoint: str | None = None) -> None:
        import torch

        self.cfg = from_dict(ServeConfig, serve_config, "serve")
        self.run_url, self.checkpoint = run_url, checkpoint
        torch.set_num_threads(self.cfg.torch_threads)
        self.device = "cuda" if self.cfg.replica_gpus > 0 and torch.cuda.is_available() else "cpu"
        # a thread per batch in flight, taking turns stage by stage through the gate; the event
        # loop stays free to accept and queue requests; renders on their own thread so a GIF
        # never holds a batch
        self._model_pool = ThreadPoolExecutor(self.cfg.concurrent_batches,
                                              thread_name_prefix="madis-generate")
        self.gate = StageGate() if self.cfg.concurrent_batches > 1 else None
        self._render_pool = ThreadPoolExecutor(1, thread_name_prefix="madis-render")
        self.current: LoadedModel = LoadedModel.load(choose_model(run_url, checkpoint), self.cfg,
                                                     self.device)
        self.reloads: list[dict[str, Any]] = []
        self.reload_error: dict[str, Any] | None = None
        self._failed_key: tuple | None = None
        # serve.batch's concurrency is fixed when it wraps: wrap per replica, from the config
        self.generate_batch = serve.batch(
            max_batch_size=self.cfg.max_batch_size, batch_wait_timeout_s=self.cfg.batch_wait_idle_s,
            max_concurrent_batches=self.cfg.concurrent_batches)(self._decode_batch)
        self._decoding = 0  # batches between the start and the end of _decode_batch
        self._stop = threading.Event()
        if not checkpoint:
            threading.Thread(target=self._poll, name="madis-best-poller", daemon=True).start()

    def __del__(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ reloading
    def _poll(self) -> None:
        while not self._stop.wait(self.cfg.poll_s):
            try:
                self.poll_once()
            except Exception:  # noqa: BLE001 - a bad poll must never stop polling or serving
                log.exception("best.json poll failed; still serving step %s", self.current.choice.step)

    def poll_once(self) -> bool:
        """Read ``best.json`` once; load and swap in the model it names if that changed.

        Returns True when a new model was swapped in. A model that fails to load is recorded
        in ``/info`` (``reload.error``) and not tried again until best.json names another one;
        the serving model stays.
        """
        choice = choose_model(self.run_url, None)
        current = self.current
        if choice.key == current.choice.key:
            if choice != current.choice:  # same weights, newer metrics or updated_at
                current.choice = choice
            return False
        if choice.key == self._failed_key:
            return False
        t0 = time.perf_counter()
        try:
            new = LoadedModel.load(choice, self.cfg, self.device)
        except Exception as exn:  # noqa: BLE001 - keep serving the old model
            self._failed_key = choice.key
            self.reload_error = {"export_url": choice.export_url, "step": choice.step,
                                 "error": f"{type(exn).__name__}: {exn}", "at": time.time()}
            log.exception("could not load %s; still serving step %s", choice.export_url,
                          current.choice.step)
            return False
        self.current = new  # the swap: batches read self.current once, at their start
        self.reload_error, self._failed_key = None, None
        self.reloads.append({"from_step": current.choice.step, "to_step": choice.step,
                             "export_url": choice.export_url,
                             "load_s": round(time.perf_counter() - t0, 3), "at": time.time()})
        log.info("now serving %s (step %s)", choice.export_url, choice.step)
        return True

    # ------------------------------------------------------------------ batching
    async def _decode_batch(self, items: list[tuple[GenerateRequest, float, Any]]
                            ) -> list[GenerationResult | RequestError]:
        """Decode a batch of ``(request, arrival time, stage sink or None)`` on a model thread
        (``self.generate_batch``, the ``serve.batch`` wrapper made in ``__init__``, gathers
        single items into these batches)."""
        loaded = self.current  # one model for the whole batch, even if a swap happens now
        start = time.perf_counter()
        self._decoding_changed(+1)
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._model_pool, loaded.generate, [r for r, _, _ in items],
                [s for _, _, s in items], self.gate)
        finally:
            self._decoding_changed(-1)
        for (_, arrived, _), res in zip(items, results):
            if isinstance(res, GenerationResult):
                res.timings["queue_ms"] = round(1e3 * (start - arrived), 3)
        return results

    def _decoding_changed(self, delta: int) -> None:
        """Count batches decoding (on the event loop, so no lock); the next batch's wait to
        fill is ``serve.batch_wait_s`` while one decodes, ``batch_wait_idle_s`` while none
        does (serve.batch reads it when a batch's first request arrives)."""
        self._decoding += delta
        self.generate_batch.set_batch_wait_timeout_s(
            self.cfg.batch_wait_s if self._decoding else self.cfg.batch_wait_idle_s)

    # ------------------------------------------------------------------ routes
    @api.get("/", response_class=HTMLResponse)
    async def page(self) -> HTMLResponse:
        return HTMLResponse(page_html())

    @api.get("/healthz")
    async def healthz(self) -> dict:
        c = self.current.choice
        return {"status": "ok", "checkpoint_step": c.step, "export_url": c.export_url}

    @api.get("/info")
    async def info(self) -> dict:
        cfg = self.cfg
        return {**self.current.info(),
                "serve": {"max_batch_size": cfg.max_batch_size, "batch_wait_s": cfg.batch_wait_s,
                          "batch_wait_idle_s": cfg.batch_wait_idle_s,
                          "concurrent_batches": cfg.concurrent_batches,
                          "min_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas,
                          "target_ongoing_requests": cfg.target_ongoing_requests,
                          "poll_s": None if self.checkpoint else cfg.poll_s,
                          "run": self.run_url, "checkpoint": self.checkpoint},
                "reload": {"reloads": self.reloads[-10:], "error": self.reload_error},
                "replica": serve.get_replica_context().replica_id.unique_id}

    @api.post("/generate")
    async def generate(self, request: Request,
                       output: str | None = Query(None, alias="format"),
                       screen: bool = False) -> Response:
        received = time.perf_counter()
        fmt = parse_output_format(output)
        limits = self.current.limits
        req = parse_generate(await read_body(request, limits.max_body_bytes), limits)
        result = await self.generate_batch((req, received, None))
        if isinstance(result, RequestError):
            raise result
        motion_format = self.current.format
        if fmt == "json":
            result.timings["total_ms"] = 1e3 * (time.perf_counter() - received)
            return Response(result_json(result, motion_format, screen=screen),
                            media_type="application/json", headers=self._headers(result))
        if fmt == "pose":
            render, media = render_pose, "application/octet-stream"
        else:
            render, media = partial(render_gif, size=self.cfg.gif_size), "image/gif"
        data = await asyncio.get_running_loop().run_in_executor(
            self._render_pool, render, result, motion_format)
        result.timings["total_ms"] = 1e3 * (time.perf_counter() - received)
        headers = {**self._headers(result),
                   "Content-Disposition": f'attachment; filename="madis-{req.lang}.{fmt}"'}
        return Response(data, media_type=media, headers=headers)

    @api.post("/generate/stream")
    async def generate_stream(self, request: Request, screen: bool = False) -> Response:
        """Server-sent events of the coarse-to-fine decoding (module doc; docs/decoding.md).
        A bad request is refused (4xx JSON) before the stream starts."""
        received = time.perf_counter()
        limits = self.current.limits
        req = parse_generate(await read_body(request, limits.max_body_bytes), limits)
        loop = asyncio.get_running_loop()
        views: asyncio.Queue = asyncio.Queue()
        task = asyncio.ensure_future(self.generate_batch(
            (req, received, lambda view: loop.call_soon_threadsafe(views.put_nowait, view))))
        fmt = self.current.format
        return StreamingResponse(stream_events(task, views, fmt, screen, received),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @staticmethod
    def _headers(result: GenerationResult) -> dict[str, str]:
        # the timings as a header too: clients of .pose/GIF bodies (and load tests that do not
        # parse bodies) see them
        return {"X-MaDiS-Checkpoint-Step": str(result.step),
                "X-MaDiS-Timings": json.dumps(rounded_timings(result.timings))}


# ---------------------------------------------------------------------- building and deploying
def build_app(cfg: ServeConfig, run_url: str | None = None, checkpoint: str | None = None):
    """The Serve application (``TextToSign`` with the config's autoscaling, batching and
    resources), ready for ``serve.run``.

    Raises:
        ValueError: neither ``run_url`` nor ``checkpoint``.
    """
    if not run_url and not checkpoint:
        raise ValueError("give a run directory (holding best.json) or a checkpoint to serve")
    if cfg.min_replicas == cfg.max_replicas:
        # a fixed count: no autoscaling metrics for the controller to gather and weigh
        # (docs/operations.md#serving: its CPU share on a 2-core machine)
        scaling: dict[str, Any] = {"num_replicas": cfg.max_replicas}
    else:
        scaling = {"autoscaling_config": {
            "min_replicas": cfg.min_replicas,
            "initial_replicas": max(cfg.min_replicas, 1),
            "max_replicas": cfg.max_replicas,
            "target_ongoing_requests": cfg.target_ongoing_requests,
            "upscale_delay_s": cfg.upscale_delay_s,
            "downscale_delay_s": cfg.downscale_delay_s,
        }}
    return TextToSign.options(
        max_ongoing_requests=cfg.max_ongoing_requests, **scaling,
        ray_actor_options={"num_cpus": cfg.replica_cpus, "num_gpus": cfg.replica_gpus,
                           "resources": dict(cfg.replica_resources)},
    ).bind(to_dict(cfg), run_url, checkpoint)


def deploy(cfg: ServeConfig, run_url: str | None = None, checkpoint: str | None = None) -> str:
    """Start Serve on the connected cluster (HTTP on ``cfg.host:cfg.port``) and deploy the
    application under ``cfg.app_name``; returns its base URL once every replica is up.

    Serve's controller is a detached actor, so the application keeps serving after the
    calling driver (e.g. a ``ray job submit`` job) exits; redeploying replaces it in place.
    """
    serve.start(http_options={"host": cfg.host, "port": cfg.port},
                proxy_location=cfg.proxy_location)
    serve.run(build_app(cfg, run_url, checkpoint), name=cfg.app_name,
              route_prefix=cfg.route_prefix, blocking=False)
    return base_url(cfg)


def base_url(cfg: ServeConfig) -> str:
    """``http://host:port/prefix/`` of the application."""
    prefix = cfg.route_prefix.rstrip("/")
    return f"http://{cfg.host}:{cfg.port}{prefix}/"


__all__ = ["DEPLOYMENT", "ModelChoice", "TextToSign", "api", "base_url", "build_app", "deploy",
           "page_html"]
