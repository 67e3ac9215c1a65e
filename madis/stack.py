"""The embedded default: the whole pipeline on one machine, from ``madis up`` to ``madis down``.

``madis up`` starts a local S3-compatible server and a local Ray cluster on 127.0.0.1, builds and
uploads the real sample shards, submits the jobs with ``ray job submit`` exactly as a user would
on a GPU cluster (tokenizer, SiCLIP, pretraining, fine-tuning with the eval fleet beside it), then
deploys Ray Serve on the fleet's best checkpoint and sends it one request. Everything it builds is
reused by the next ``madis up``: finished runs return at once, uploads are skipped when present.

Ray listens on every interface of a machine. When run as root with ``ip`` available, ``madis up``
and ``madis down`` therefore re-execute themselves inside a persistent network namespace named
``madis`` that holds only ``lo``: the servers live there until ``madis down``, and nothing outside
the machine can reach them (``ip netns exec madis curl ...`` reaches them from this machine).
``MADIS_NO_NETNS=1`` skips the namespace.

Token authentication stays on: ``madis up`` makes the cluster's Ray token when none exists, one
per checkout (``.madis/ray_auth_token``, mode 0600, never printed), and hands it to ``ray start``,
``ray job submit`` and, through them, every job with ``RAY_AUTH_TOKEN_PATH``; ``~/.ray`` is not
used, so a machine with an empty HOME works the same as a development machine.

This module only runs commands (``ray``, ``moto_server``); it imports no Ray itself.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

NETNS = "madis"
S3_PORT = 9000
DASHBOARD = "http://127.0.0.1:8265"
SERVE_URL = "http://127.0.0.1:8000"
BUCKET = "s3://madis"
SAMPLE_URL = f"{BUCKET}/sample"
TOKENS_URL = f"{BUCKET}/tokens"
#: the sample's pretraining corpus (fingerspelled pseudo-words) and its tokens
PRETRAIN_URL = f"{BUCKET}/pretrain"
PRETRAIN_TOKENS_URL = f"{BUCKET}/pretrain-tokens"
#: the GCS address `ray start --head` takes (the client server names it, not the temp dir)
GCS_ADDRESS = "127.0.0.1:6379"
DEMO_TEXT = ("HELLO", "ase")

#: What the console shows of a job's output (everything is in .madis/logs/<job>.log): progress
#: bars, MaDiS's own log lines, and the outcome. Ray's and DeepSpeed's chatter stays in the log.
_SHOW = re.compile(r"\d+%\||\[madis\] |\bINFO madis\.|\bWARNING madis\.|succeeded|FAILED|failed with|Error:|^Traceback")


@dataclass
class Paths:
    """Where the embedded default keeps its state (all under the repository)."""

    repo: Path
    storage_dir: Path | None = None

    @property
    def ray_temp(self) -> str:
        """The Ray cluster's temp dir, one per checkout (``MADIS_RAY_TEMP`` overrides): `madis
        down` finds its cluster by it, so it never stops another checkout's. Short: Ray's
        socket paths must stay under 107 characters."""
        digest = hashlib.sha1(str(self.repo.resolve()).encode()).hexdigest()[:8]
        return os.environ.get("MADIS_RAY_TEMP", f"/tmp/madis-ray-{digest}")

    @property
    def state(self) -> Path:
        return Path(os.environ.get("MADIS_HOME", self.repo / ".madis"))

    @property
    def token(self) -> Path:
        """The cluster's Ray authentication token (see :func:`ensure_ray_token`)."""
        return self.state / "ray_auth_token"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def storage(self) -> Path:
        return (self.storage_dir or self.repo / "storage").resolve()

    @property
    def shards(self) -> Path:
        return self.repo / "shards"

    @property
    def demo(self) -> Path:
        return self.storage / "demo"


def find_repo(start: Path | None = None) -> Path:
    """The MaDiS checkout holding ``ray_jobs/`` (the jobs ``madis up`` submits).

    Raises:
        SystemExit: not run from inside a checkout.
    """
    for p in [start or Path.cwd(), *(start or Path.cwd()).parents,
              Path(__file__).resolve().parent.parent]:
        if (p / "ray_jobs" / "pretrain.py").exists() and (p / "configs").is_dir():
            return p
    raise SystemExit("madis up/down: run from the MaDiS checkout (no ray_jobs/ found here)")


# --------------------------------------------------------------------------- network namespace
def _loopback_only() -> bool:
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def ensure_isolated(argv: list[str]) -> None:
    """Re-execute this command inside the ``madis`` network namespace when that is needed.

    Returns without doing anything when already isolated (only ``lo`` is visible), when
    ``MADIS_NO_NETNS=1``, or when namespaces cannot be made (not root): then a warning says that
    Ray will listen on every interface.
    """
    if os.environ.get("MADIS_NO_NETNS") == "1" or _loopback_only():
        return
    if os.geteuid() != 0 or not shutil.which("ip"):
        print("[madis] warning: cannot isolate the servers (needs root and `ip`); Ray will listen "
              "on every interface of this machine (token authentication stays on).")
        return
    if not Path(f"/run/netns/{NETNS}").exists():
        subprocess.run(["ip", "netns", "add", NETNS], check=True)
    subprocess.run(["ip", "-n", NETNS, "link", "set", "lo", "up"], check=True)
    sys.stdout.flush()
    os.environ["MADIS_NETNS"] = NETNS  # tells netns_hint that the servers live in there
    os.execvp("ip", ["ip", "netns", "exec", NETNS, sys.executable, "-m", "madis.cli", *argv])


def netns_hint() -> str:
    """The prefix a printed command needs to reach the servers from the host."""
    return f"ip netns exec {NETNS} " if os.environ.get("MADIS_NETNS") == NETNS else ""


# --------------------------------------------------------------------------- steps
class Step:
    """Numbered progress lines with elapsed time: ``[3/9] Ray cluster ... running (2.1 s)``."""

    def __init__(self, total: int) -> None:
        self.total, self.n, self.t0 = total, 0, time.monotonic()

    def __call__(self, title: str) -> "Step":
        self.n += 1
        self.t = time.monotonic()
        print(f"[{self.n}/{self.total}] {title}", flush=True)
        return self

    def done(self, what: str) -> None:
        print(f"      {what} ({time.monotonic() - self.t:.1f} s)", flush=True)


def ensure_ray_token(path: Path) -> Path:
    """The Ray authentication token file at ``path``, made when missing.

    A new token is 32 random bytes as hex (what ``ray get-auth-token --generate`` writes), in a
    file created with mode 0600 and without ever being printed; an existing file is kept (a
    running cluster holds it) and made private again if its mode lets others read it. Ray reads
    it wherever ``RAY_AUTH_TOKEN_PATH`` points (docs.ray.io, "Ray token authentication").

    Raises:
        SystemExit: an existing token file is empty (Ray would abort on it).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        if not path.read_text().strip():
            raise SystemExit(f"{path} is empty: remove it (after `madis down`) and run again")
        return path
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


def ray_auth_env(token: Path) -> dict[str, str]:
    """Environment entries that make Ray's CLI, a driver and everything it starts use ``token``."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token.resolve())}


def _env(paths: Paths, s3_env: dict[str, str]) -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)
    # RAY_AUTH_TOKEN would win over the token file (Ray's precedence): this checkout's token rules
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"}
    return {**env, **s3_env, **ray_auth_env(paths.token),
            "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1"}


def _s3_env() -> dict[str, str]:
    from madis.data.s3server import LOCAL_CREDENTIALS

    return {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}", **LOCAL_CREDENTIALS}


def _answers(url: str, timeout: float = 2.0) -> bool:
    try:
        urllib.request.urlopen(url, timeout=timeout).read()
        return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def start_s3(paths: Paths) -> str:
    """The local S3 server on 127.0.0.1:9000, started as a daemon unless it already answers."""
    from madis.data.s3server import LocalS3Server

    if _answers(f"http://127.0.0.1:{S3_PORT}/"):
        return "running"
    server = LocalS3Server(port=S3_PORT, log_path=paths.logs / "s3.log").start()
    (paths.state / "s3.pid").write_text(str(server._proc.pid))
    return f"started (pid {server._proc.pid}, data in memory until `madis down`)"


def upload_if_missing(local: Path, url: str) -> str:
    """Upload a shard directory unless the same manifest is already at ``url``."""
    from madis.data import storage

    mine = json.loads((local / "manifest.json").read_text())
    try:
        theirs = json.loads(storage.read_bytes(f"{url}/manifest.json"))
    except storage.StorageError:
        theirs = None
    if theirs == mine:
        return f"{url} already holds these shards"
    storage.upload_dir(local, url)
    return f"uploaded {local} -> {url}"


def own_corpus(shards: Path) -> tuple[str, tuple[str, str]]:
    """``madis up --shards DIR``: the corpus's name on the local S3 server and in storage/
    (``corpus-`` + its manifest's SHA-256, so a rebuilt corpus gets fresh runs) and the demo
    request (the first test sample of a language train has, else val's, else train's).

    Raises:
        SystemExit: not a local motion shard directory.
    """
    from madis.data.shards import iter_samples, read_manifest

    manifest = shards / "manifest.json"
    if not manifest.is_file():
        raise SystemExit(f"--shards {shards}: no manifest.json there; build your corpus with "
                         "`madis data build-pose INDEX --out DIR` (README 'Your own .pose data')")
    m = read_manifest(str(shards))
    if m.get("tokens"):
        raise SystemExit(f"--shards {shards} holds token shards; give the motion shards")
    trained = m["splits"]["train"]["languages"]  # Serve accepts the languages it trained on
    demo = next((s["meta"]["text"], s["meta"]["lang"]) for split in ("test", "val", "train")
                if m["splits"].get(split, {}).get("samples")
                for s in iter_samples(str(shards), split, shuffle=False, manifest=m)
                if s["meta"]["lang"] in trained)
    return "corpus-" + hashlib.sha256(manifest.read_bytes()).hexdigest()[:8], demo


def pretraining_tokens(paths: Paths, tokens_url: str) -> str:
    """The sample's pretraining corpus (:func:`madis.data.sample.build_pretrain_corpus`, 3,800
    pseudo-words; docs/signing.md#pretraining) built into ``pretrain_shards/``, uploaded to
    :data:`PRETRAIN_URL` and encoded with the tokenizer that wrote ``tokens_url`` into
    :data:`PRETRAIN_TOKENS_URL`; each step skipped when its output is already there (the token
    set is redone when the tokenizer changed). Returns a one-line summary."""
    from madis.data import storage
    from madis.data.sample import build_pretrain_corpus, is_up_to_date, pretrain_fingerprint
    from madis.data.shards import read_manifest
    from madis.tokenizer.token_shards import tokenize_like

    local = paths.repo / "pretrain_shards"
    if not is_up_to_date(local, pretrain_fingerprint()):
        build_pretrain_corpus(local)
    upload_if_missing(local, PRETRAIN_URL)
    want = read_manifest(tokens_url).get("tokenizer_export")
    try:
        have = read_manifest(PRETRAIN_TOKENS_URL)
    except (storage.StorageError, FileNotFoundError):
        have = {}
    source = json.loads((local / "manifest.json").read_text())["splits"]["train"]["sha256"]
    if have.get("tokenizer_export") == want and have.get("source_sha256") == source:
        return f"{PRETRAIN_TOKENS_URL} already holds its tokens"
    tokenize_like(PRETRAIN_URL, tokens_url, PRETRAIN_TOKENS_URL, extra={"source_sha256": source})
    return f"{PRETRAIN_TOKENS_URL}: {len(source)} train shards tokenized"


def ray_running(env: dict[str, str]) -> bool:
    """True when the Ray cluster at :data:`DASHBOARD` answers with this checkout's token.

    Raises:
        SystemExit: a cluster answers there but refuses the token (another checkout's, or one
            started before this checkout had a token of its own).
    """
    if not Path(env["RAY_AUTH_TOKEN_PATH"]).exists():
        return False
    out = subprocess.run(["ray", "job", "list", "--address", DASHBOARD], env=env,
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0 and re.search(r"Unauthenticated|[Aa]uthentication|401",
                                         out.stdout + out.stderr):
        raise SystemExit(f"a Ray cluster answers at {DASHBOARD} but refuses this checkout's token "
                         f"({env['RAY_AUTH_TOKEN_PATH']}): it was started elsewhere or with "
                         f"another token; stop it (`madis down` in the checkout that started it)")
    return out.returncode == 0


def start_ray(env: dict[str, str], num_cpus: int, temp_dir: str) -> str:
    if ray_running(env):
        return f"running ({DASHBOARD})"
    cmd = ["ray", "start", "--head", f"--num-cpus={num_cpus}", "--dashboard-host=127.0.0.1",
           "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    # workers inherit RAY_ADDRESS: Ray Train's own actors otherwise look the cluster up among
    # every Ray instance of the machine and fail when the user runs another one
    out = subprocess.run(cmd, env={**env, "RAY_ADDRESS": GCS_ADDRESS}, capture_output=True,
                         text=True, timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"ray start failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return f"started ({DASHBOARD}, {num_cpus} CPUs, token authentication on)"


class Job:
    """One ``ray job submit`` run: its output goes to ``.madis/logs/<name>.log``; the console
    gets the job's own lines (progress, reports) prefixed with its name."""

    def __init__(self, name: str, script: str, args: list[str], paths: Paths,
                 env: dict[str, str]) -> None:
        self.name = name
        runtime_env = {"env_vars": {k: env[k] for k in _s3_env()}}
        cmd = ["ray", "job", "submit", "--address", DASHBOARD, "--working-dir", str(paths.repo),
               "--runtime-env-json", json.dumps(runtime_env), "--", "python", script, *args]
        self.log_path = paths.logs / f"{name}.log"
        # appended: a re-run must not erase the log of the run that trained the model
        self.log = open(self.log_path, "a", encoding="utf-8")
        self.log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n$ "
                       + " ".join(cmd) + "\n")
        self.proc = subprocess.Popen(cmd, env=env, cwd=paths.repo, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1,
                                     errors="replace")
        self.lines: list[str] = []
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            # tqdm redraws with \r: keep the last state of each line
            line = raw.rstrip("\n").split("\r")[-1]
            self.log.write(raw)
            self.log.flush()
            self.lines.append(line)
            if _SHOW.search(line):
                line = re.sub(r"\x1b\[[0-9;]*m", "", line)
                line = re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(SUCC \S+ -- )?", "", line)
                print(f"      [{self.name}] {line[:150]}", flush=True)

    def wait(self) -> int:
        rc = self.proc.wait()
        self._pump.join(timeout=10)
        self.log.close()
        return rc


def run_job(name: str, script: str, args: list[str], paths: Paths, env: dict[str, str]) -> None:
    for _ in range(12):
        job = Job(name, script, args, paths, env)
        if job.wait() == 0:
            return
        # right after `ray start` the dashboard may answer before the head's job agent exists
        if not any("No available agent" in line for line in job.lines):
            break
        time.sleep(5)
    raise SystemExit(f"job {name} failed; its whole log: {job.log_path}")


def wait_http(url: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(1)
    return False


def demo_request(paths: Paths, demo: tuple[str, str] = DEMO_TEXT) -> str:
    """One POST /generate (JSON and GIF) of ``demo`` (text, lang); returns a one-line summary."""
    text, lang = demo
    body = json.dumps({"text": text, "lang": lang}).encode()
    req = urllib.request.Request(f"{SERVE_URL}/generate", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        reply = json.loads(r.read())
    paths.demo.mkdir(parents=True, exist_ok=True)
    gif = paths.demo / f"{text}_{lang}.gif"
    req = urllib.request.Request(f"{SERVE_URL}/generate?format=gif", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            gif.write_bytes(r.read())
        rendered = f"rendered to {gif}"
    except urllib.error.HTTPError as e:  # e.g. smplx133 without the SMPL-X model files
        rendered = f"no rendering: {e.code} {e.read()[:200].decode(errors='replace')}"
    (paths.demo / f"{text}_{lang}.json").write_text(json.dumps(reply)[:10_000_000])
    timings = reply.get("timings", {})
    return (f"'{text}' [{lang}] -> {reply.get('length')} sign positions, {reply.get('frames')} "
            f"frames, checkpoint step {reply.get('checkpoint_step')}, "
            f"{timings.get('total_ms', float('nan')):.0f} ms; {rendered}")


# --------------------------------------------------------------------------- up / down
def _overrides(args: argparse.Namespace, job: str, storage: Path) -> list[str]:
    out = [f"--config={args.config}", f"train.storage_path={storage}"]
    if args.quick:
        out += [f"train_{job}.steps={args.quick}", f"train_{job}.checkpoint_every="
                f"{max(1, args.quick // 2)}"]
    return out


def cmd_up(args: argparse.Namespace) -> int:
    ensure_isolated(["up", *_argv_of(args)])
    paths = Paths(find_repo(), args.storage)
    paths.logs.mkdir(parents=True, exist_ok=True)
    data_url, tokens_url, demo = SAMPLE_URL, TOKENS_URL, DEMO_TEXT
    if args.shards:
        name, demo = own_corpus(args.shards)
        data_url, tokens_url = f"{BUCKET}/{name}", f"{BUCKET}/{name}-tokens"
        paths.storage_dir = args.storage or paths.repo / "storage" / name
    st = paths.storage
    # the profile names the runs: an ablation profile trains, ranks and serves its own
    from madis import runs
    from madis.config import load_tree

    tree = load_tree(args.config)
    run = {job: runs.job_run(tree, job, storage=str(st))
           for job in ("siclip", "pretrain", "finetune")}
    t0 = time.monotonic()
    ensure_ray_token(paths.token)
    env = _env(paths, _s3_env())
    os.environ.update(_s3_env())
    step = Step(9)

    step("S3-compatible server on 127.0.0.1")
    step.done(start_s3(paths))

    from madis.data.sample import build_sample_corpus, is_up_to_date

    if args.shards:
        step(f"your shards ({args.shards}; runs in {paths.storage})")
        step.done(f"demo request: {demo[0]!r} [{demo[1]}]")
    else:
        step("sample shards (real fingerspelling clips, 19 sign languages)")
        if is_up_to_date(paths.shards):
            step.done(f"{paths.shards} up to date")
        else:
            build_sample_corpus(paths.shards)
            step.done(f"built into {paths.shards}")

    step(f"upload to {data_url}")
    step.done(upload_if_missing(args.shards or paths.shards, data_url))

    step("Ray cluster on 127.0.0.1")
    step.done(start_ray(env, args.num_cpus, paths.ray_temp))

    step("tokenizer job (ray job submit ray_jobs/train_tokenizer.py)")
    run_job("tokenizer", "ray_jobs/train_tokenizer.py",
            ["--shards", data_url, "--tokens", tokens_url, *_overrides(args, "tokenizer", st)],
            paths, env)
    step.done(f"token shards at {tokens_url}")

    step("SiCLIP job (ray job submit ray_jobs/train_siclip.py)")
    run_job("siclip", "ray_jobs/train_siclip.py",
            ["--shards", data_url, *_overrides(args, "siclip", st)], paths, env)
    step.done(f"run {run['siclip']}")

    step("pretraining job (ray job submit ray_jobs/pretrain.py)")
    pretrain_sets = ["--shards", tokens_url]
    if not args.shards:  # the sample's own pretraining corpus joins it (docs/signing.md)
        print(f"      {pretraining_tokens(paths, tokens_url)}", flush=True)
        pretrain_sets += ["--shards", PRETRAIN_TOKENS_URL]
    run_job("pretrain", "ray_jobs/pretrain.py",
            [*pretrain_sets, *_overrides(args, "pretrain", st)], paths, env)
    step.done(f"run {run['pretrain']}")

    step("fine-tuning job with the eval fleet beside it")
    fleet = Job("fleet", "ray_jobs/eval_fleet.py",
                ["--job", "finetune", f"--config={args.config}", f"train.storage_path={st}"],
                paths, env)
    try:
        run_job("finetune", "ray_jobs/finetune.py",
                ["--shards", tokens_url, *_overrides(args, "finetune", st)], paths, env)
    except SystemExit:
        fleet.proc.terminate()
        raise
    if fleet.wait() != 0:
        raise SystemExit(f"the eval fleet failed; its whole log: {fleet.log_path}")
    from madis.fleet.registry import read_best

    best = read_best(run['finetune']) or {}
    b = best.get("best") or {}
    value = b.get("value")
    shown = f"{value:.2f}" if isinstance(value, (int, float)) else "none"
    step.done(f"best checkpoint by {best.get('metric')}: step {b.get('step')} ({shown}); "
              f"TensorBoard logs in {run['finetune']}/tensorboard")

    step("Ray Serve on the best checkpoint, and one request")
    run_job("serve", "ray_jobs/serve.py", ["--run", run["finetune"],
                                            f"--config={args.config}"], paths, env)
    if not wait_http(f"{SERVE_URL}/healthz", 300):
        raise SystemExit(f"the service did not become healthy; see {paths.logs}/serve.log")
    step.done(demo_request(paths, demo))

    ns, venv = netns_hint(), Path(sys.executable).parent
    # as printed, from any directory and shell: Ray's CLI needs this checkout's token file
    auth = ("env " + ("-u RAY_AUTH_TOKEN " if "RAY_AUTH_TOKEN" in os.environ else "")
            + " ".join(f"{k}={v}" for k, v in ray_auth_env(paths.token).items()))
    print(f"""
MaDiS is up ({time.monotonic() - t0:.0f} s).
  service        {SERVE_URL}/  (demo page; POST /generate)   e.g.
                 {ns}curl -s -X POST {SERVE_URL}/generate -d '{{"text": "HELLO", "lang": "ase"}}'
  rendered       {paths.demo}/
  TensorBoard    {venv}/tensorboard --logdir {run['finetune']}/tensorboard --host 127.0.0.1
  best checkpoint {venv}/madis best {run['finetune']} --history
  Ray dashboard  {DASHBOARD}   jobs:
                 {ns}{auth} {venv}/ray job list --address {DASHBOARD}
  logs           {paths.logs}/
  stop all       {venv}/madis down
""")
    return 0


def stop_ray_cluster(temp_dir: str) -> int:
    """End the Ray cluster started with ``--temp-dir temp_dir``: every process whose command
    line names it, their children, and, when there were any, that cluster's client server,
    which names neither and outlives `ray start` as an orphan (never `ray stop`: it ends every
    cluster of the machine). Returns how many processes were ended."""
    import psutil

    procs, client = [], []
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmdline = " ".join(p.info["cmdline"] or [])
            if temp_dir in cmdline:
                # Ray's agents do not name the temp dir: take the whole tree
                procs += [p, *p.children(recursive=True)]
            elif "ray.util.client.server" in cmdline and f"--address={GCS_ADDRESS}" in cmdline:
                client.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    if procs:
        procs += client
    procs = list({p.pid: p for p in procs}.values())
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    return len(procs)


def cmd_down(args: argparse.Namespace) -> int:
    ensure_isolated(["down"])
    paths = Paths(find_repo())
    env = _env(paths, _s3_env())
    try:
        running = ray_running(env)
    except SystemExit:  # not this checkout's cluster: its Serve is not ours to shut down
        running = False
    if running:
        subprocess.run(["serve", "shutdown", "--address", DASHBOARD, "-y"], env=env,
                       capture_output=True, timeout=120)
    # by the cluster's own temp dir: `ray stop` would end every Ray cluster of this machine
    n = stop_ray_cluster(paths.ray_temp)
    print(f"[madis] Ray cluster stopped ({n} processes)")
    pid_file = paths.state / "s3.pid"
    if pid_file.exists():
        import psutil

        try:
            psutil.Process(int(pid_file.read_text())).terminate()
            print("[madis] S3 server stopped (its in-memory data is gone; local shards and "
                  "storage/ stay)")
        except psutil.NoSuchProcess:
            pass
        pid_file.unlink()
    print(f"[madis] kept: {paths.shards}/, {paths.storage}/ (remove them to start from scratch)")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    """Make this checkout's Ray token when missing and say where it is (never what it is)."""
    path = ensure_ray_token(Paths(find_repo()).token).resolve()
    print(f"[madis] this checkout's Ray cluster token: {path} (mode 0600; `madis up` uses it, "
          f"cluster.yaml copies it to every node)\n"
          f"        for the ray CLI: export " + " ".join(f"{k}={v}" for k, v in
                                                    ray_auth_env(path).items()))
    return 0


def add_parser(subparsers) -> None:
    up = subparsers.add_parser(
        "up", help="run the whole pipeline on this machine (local S3 + Ray, 127.0.0.1)",
        description=__doc__.split("\n\n")[1])
    up.add_argument("--config", default="cpu-tiny", help="profile for every job (default cpu-tiny)")
    up.add_argument("--storage", type=Path, default=None,
                    help="where runs are kept (default: storage/ in the checkout)")
    up.add_argument("--num-cpus", type=int, default=2, help="CPUs the local Ray cluster offers")
    up.add_argument("--quick", type=int, default=0, metavar="STEPS",
                    help="cut every training job to STEPS steps (a smoke test of the chain)")
    up.add_argument("--shards", type=Path, default=None, metavar="DIR",
                    help="your own motion shard directory (madis data build-pose) instead of the "
                         "sample corpus; runs go to storage/corpus-<manifest digest>/ unless "
                         "--storage")
    up.set_defaults(func=cmd_up)
    down = subparsers.add_parser(
        "down", help="stop what `madis up` started (Ray, Serve, S3)",
        description="Stop what `madis up` started from this checkout: Ray Serve, the local Ray "
                    "cluster (found by its temp dir, so other Ray clusters of the machine stay "
                    "up) and the local S3 server. Built shards and storage/ are kept.")
    down.set_defaults(func=cmd_down)
    token = subparsers.add_parser(
        "token", help="make this checkout's Ray cluster token (if missing) and print its path",
        description="Make this checkout's Ray authentication token when it has none "
                    "(.madis/ray_auth_token: 32 random bytes as hex, mode 0600) and print its "
                    "path, never the token. `madis up` starts its cluster with it; cluster.yaml "
                    "copies it to every node; the ray CLI finds it through RAY_AUTH_TOKEN_PATH.")
    token.set_defaults(func=cmd_token)


def _argv_of(args: argparse.Namespace) -> list[str]:
    out = [f"--config={args.config}", f"--num-cpus={args.num_cpus}", f"--quick={args.quick}"]
    out += [f"--shards={args.shards.resolve()}"] if args.shards else []
    return out + ([f"--storage={args.storage.resolve()}"] if args.storage else [])
