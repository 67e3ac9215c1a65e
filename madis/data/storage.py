"""Storage URLs: a local directory, ``file://...`` or ``s3://bucket/prefix`` on any S3 endpoint.

S3 goes through s3fs (fsspec) with the standard settings: ``AWS_ENDPOINT_URL`` for the endpoint
(AWS itself when unset), credentials from the environment or a profile. Connection timeouts are
short and retries few, so that an unreachable endpoint or a missing bucket fails in seconds with
a :class:`StorageError` that says which, instead of botocore's minute of silent retries.

Importing this module registers an ``s3`` scheme in ``webdataset.gopen.gopen_schemes``
(webdataset 1.0.2 has none), so webdataset pipelines stream ``s3://`` shards through s3fs,
in memory, without copying them to disk.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

#: s3fs read-ahead block: shards are a few MB, so one ranged GET usually brings a whole shard.
S3_BLOCK_SIZE = 16 * 2**20


class StorageError(RuntimeError):
    """The storage behind a URL cannot be used: endpoint unreachable, bucket or object missing,
    access denied. The message names the URL and the endpoint."""


class EndpointUnreachable(StorageError):
    """The S3 endpoint does not answer."""


class BucketMissing(StorageError):
    """The bucket does not exist at the endpoint."""


class ObjectMissing(StorageError):
    """The bucket exists but the object does not."""


def is_s3(url: str | os.PathLike) -> bool:
    return str(url).startswith("s3://")


def local_path(url: str | os.PathLike) -> Path:
    """A local directory or ``file://`` URL as a :class:`Path`.

    Raises:
        ValueError: the URL has another scheme.
    """
    s = str(url)
    pr = urlparse(s)
    if pr.scheme == "file":
        return Path(url2pathname(pr.path))
    if pr.scheme in ("", ) or (len(pr.scheme) == 1 and os.name == "nt"):
        return Path(s)
    raise ValueError(f"not a local path or file:// URL: {s!r}")


def absolute(url: str | os.PathLike) -> str:
    """``url`` with a plain local path made absolute; URLs with a scheme are returned as is.

    Ray workers and jobs may run in another working directory than the driver that named the
    path, where a relative one would point elsewhere.
    """
    s = str(url)
    return s if "://" in s else str(Path(s).resolve())


def join(url: str | os.PathLike, name: str) -> str:
    """``url`` + ``/name`` for any supported URL (local paths stay plain paths)."""
    s = str(url)
    if is_s3(s):
        return s.rstrip("/") + "/" + name
    return str(local_path(s) / name)


def endpoint() -> str:
    """The S3 endpoint in use (``AWS_ENDPOINT_URL``, or AWS when unset)."""
    return os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3") or "AWS (default)"


def s3_filesystem():
    """An ``s3fs.S3FileSystem`` for the current endpoint and credentials (cached by fsspec)."""
    import s3fs

    ep = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    client_kwargs = {"endpoint_url": ep} if ep else {}
    return s3fs.S3FileSystem(
        client_kwargs=client_kwargs,
        config_kwargs={"connect_timeout": 5, "read_timeout": 60,
                       "retries": {"max_attempts": 2, "mode": "standard"}},
        default_block_size=S3_BLOCK_SIZE,
    )


def _s3_path(url: str) -> str:
    return str(url)[len("s3://"):]


def _translate(exn: BaseException, url: str) -> StorageError:
    """Map s3fs/botocore/aiohttp errors to one clear :class:`StorageError`."""
    names = {c.__name__ for c in type(exn).__mro__}
    text = f"{type(exn).__name__}: {exn}"
    bucket = _s3_path(url).split("/", 1)[0]
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError",
                "ConnectionError", "ServerTimeoutError", "ClientOSError", "ConnectionRefusedError"}:
        return EndpointUnreachable(
            f"cannot reach the S3 endpoint {endpoint()} for {url} ({text}); check "
            f"AWS_ENDPOINT_URL and that the server is running")
    if "NoSuchBucket" in text or (isinstance(exn, FileNotFoundError) and "bucket" in text.lower()):
        return BucketMissing(f"bucket {bucket!r} does not exist at {endpoint()} ({url})")
    if isinstance(exn, PermissionError) or "AccessDenied" in text or "InvalidAccessKeyId" in text:
        return StorageError(
            f"access denied to {url} at {endpoint()} ({text}); check the credentials "
            f"(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE)")
    if isinstance(exn, FileNotFoundError):
        return ObjectMissing(f"{url} does not exist at {endpoint()}")
    return StorageError(f"S3 error for {url} at {endpoint()}: {text}")


def check_bucket(url: str) -> None:
    """Fail fast unless the bucket of ``s3://bucket/...`` exists and the endpoint answers.

    Raises:
        StorageError: endpoint unreachable, bucket missing, or access denied.
    """
    bucket = _s3_path(url).split("/", 1)[0]
    fs = s3_filesystem()
    try:
        fs.call_s3("head_bucket", Bucket=bucket)
    except Exception as exn:  # noqa: BLE001 - translated into one clear error
        if "404" in str(exn) or "Not Found" in str(exn) or isinstance(exn, FileNotFoundError):
            raise BucketMissing(f"bucket {bucket!r} does not exist at {endpoint()} ({url})") from exn
        raise _translate(exn, url) from exn


def read_bytes(url: str | os.PathLike) -> bytes:
    """The whole object / file at ``url``.

    Raises:
        StorageError: S3 trouble (see :func:`check_bucket`) or a missing object.
        FileNotFoundError: a missing local file.
    """
    s = str(url)
    if is_s3(s):
        check_bucket(s)
        try:
            return s3_filesystem().cat_file(_s3_path(s))
        except Exception as exn:  # noqa: BLE001
            raise _translate(exn, s) from exn
    return local_path(s).read_bytes()


def open_read(url: str | os.PathLike):
    """A binary read stream for ``url`` (S3: s3fs read-ahead file, nothing touches disk)."""
    s = str(url)
    if is_s3(s):
        try:
            return s3_filesystem().open(_s3_path(s), "rb", block_size=S3_BLOCK_SIZE,
                                        cache_type="readahead")
        except Exception as exn:  # noqa: BLE001
            raise _translate(exn, s) from exn
    return open(local_path(s), "rb")


def ensure_bucket(url: str) -> bool:
    """Create the bucket of ``s3://bucket/...`` when missing; True when it was created.

    Raises:
        StorageError: endpoint unreachable or access denied.
    """
    bucket = _s3_path(url).split("/", 1)[0]
    try:
        check_bucket(url)
        return False
    except BucketMissing:
        pass
    fs = s3_filesystem()
    try:
        fs.call_s3("create_bucket", Bucket=bucket)
    except Exception as exn:  # noqa: BLE001
        raise _translate(exn, url) from exn
    fs.invalidate_cache()
    return True


def upload_dir(local_dir: str | os.PathLike, url: str, create_bucket: bool = True) -> list[str]:
    """Copy the files directly in ``local_dir`` to ``s3://bucket/prefix`` (or a local dir).

    ``manifest.json`` goes last, so a reader that finds a manifest finds every shard it names.
    Returns the destination URLs written.

    Raises:
        FileNotFoundError: ``local_dir`` is not a directory.
        StorageError: S3 trouble.
    """
    src = Path(local_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"not a directory: {src}")
    files = sorted((p for p in src.iterdir() if p.is_file()), key=lambda p: (p.name == "manifest.json", p.name))
    out = []
    if is_s3(url):
        if create_bucket:
            ensure_bucket(url)
        else:
            check_bucket(url)
        fs = s3_filesystem()
        for p in files:
            dest = join(url, p.name)
            try:
                fs.put_file(str(p), _s3_path(dest))
            except Exception as exn:  # noqa: BLE001
                raise _translate(exn, dest) from exn
            out.append(dest)
    else:
        import shutil

        dst = local_path(url)
        dst.mkdir(parents=True, exist_ok=True)
        for p in files:
            shutil.copyfile(p, dst / p.name)
            out.append(str(dst / p.name))
    return out


def _gopen_s3(url, mode="rb", bufsize=8192, **kw):
    if mode != "rb":
        raise ValueError(f"{url}: only reading is supported for s3:// in webdataset")
    return open_read(url)


def register_webdataset_s3() -> None:
    """Make ``webdataset.gopen`` open ``s3://`` URLs through s3fs (idempotent)."""
    from webdataset.gopen import gopen_schemes

    gopen_schemes["s3"] = _gopen_s3


register_webdataset_s3()
