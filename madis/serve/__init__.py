"""The text-to-sign service on Ray Serve (``ray_jobs/serve.py`` deploys it).

Ray-free pieces (``ServeConfig``, the request rules, the model side, ``.pose`` encoding, the
best-checkpoint choice and the load client) import without Ray; the deployment itself
(:mod:`madis.serve.app`: ``build_app``, ``deploy``, ``TextToSign``) loads Ray on first use.
"""

from madis.serve.config import ServeConfig

_LAZY = {"TextToSign": "app", "build_app": "app", "deploy": "app", "base_url": "app",
         "LoadedModel": "generator", "choose_model": "source", "ModelChoice": "source",
         "parse_generate": "requests", "RequestError": "requests", "pose_bytes": "pose",
         "run_load": "load", "LoadReport": "load"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"madis.serve.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'madis.serve' has no attribute {name!r}")


__all__ = sorted({"ServeConfig"} | set(_LAZY))
