"""A small regression task for tests and benchmarks of the loop, with fault injection.

It exercises every path of the loop (deterministic per-rank batches, epochs, export, a worker
that raises once at a chosen position, NaN losses) in seconds on a CPU.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass

import safetensors.torch
import torch
from torch import nn

from madis.train.task import Task


#: longest a paused loss waits for its file, seconds
PAUSE_LIMIT_S = 600


class InjectedFailure(RuntimeError):
    """Raised once by :class:`RegressionTask` to simulate a crashing worker."""


def where(*, device) -> dict:
    """Where :func:`madis.train.loop.run_on_worker` ran this: process, device, torch threads,
    the forwarded ``AWS_DEFAULT_REGION``."""
    return {"pid": os.getpid(), "device": str(device), "threads": torch.get_num_threads(),
            "region": os.environ.get("AWS_DEFAULT_REGION")}


@dataclass
class RegressionTask(Task):
    """Fit ``y = A x`` (``A`` fixed by ``data_seed``) with a two-layer MLP.

    Attributes:
        dim, hidden: sizes.
        batches_per_epoch: per rank.
        fixed_batch: every batch is the same one (a loss that must fall).
        fail_at: ``(rank, position)``: that rank raises :class:`InjectedFailure` when asked for
            its batch at ``position`` (batches consumed since the run began, over epochs) -
            only once, remembered by creating ``fail_marker``.
        nan_from: from this position on, inputs are NaN (so the loss is).
        pause_at: ``(position, path)``: the loss of that batch waits until the file ``path``
            exists (a run held at a known step while a test looks at it; at most
            ``PAUSE_LIMIT_S``, then :class:`TimeoutError`).
    """

    name = "regression"
    dim: int = 8
    hidden: int = 32
    batches_per_epoch: int = 4
    data_seed: int = 1234
    fixed_batch: bool = False
    fail_at: tuple[int, int] | None = None
    fail_marker: str | None = None
    nan_from: int | None = None
    pause_at: tuple[int, str] | None = None

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(self.dim, self.hidden), nn.Tanh(),
                             nn.Linear(self.hidden, self.dim))

    def _target(self) -> torch.Tensor:
        return torch.randn(self.dim, self.dim, generator=torch.Generator().manual_seed(self.data_seed))

    def batches(self, *, rank, world_size, epoch, seed, batch_size):
        a = self._target()
        for i in range(self.batches_per_epoch):
            position = epoch * self.batches_per_epoch + i
            if self.fail_at is not None and tuple(self.fail_at) == (rank, position):
                if self.fail_marker and not os.path.exists(self.fail_marker):
                    open(self.fail_marker, "w").close()
                    raise InjectedFailure(f"injected failure on rank {rank} at batch {position}")
            key = 0 if self.fixed_batch else hash((seed, epoch, rank, world_size, i)) % 2**31
            x = torch.randn(batch_size, self.dim, generator=torch.Generator().manual_seed(key))
            if self.nan_from is not None and position >= self.nan_from:
                x = torch.full_like(x, float("nan"))
            yield {"x": x, "y": x @ a.T, "position": torch.full((batch_size,), position)}

    def loss(self, model, batch):
        if self.pause_at is not None and int(batch["position"][0]) == self.pause_at[0]:
            deadline = time.monotonic() + PAUSE_LIMIT_S
            while not os.path.exists(self.pause_at[1]):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.pause_at[1]} did not appear in {PAUSE_LIMIT_S} s")
                time.sleep(0.05)
        pred = model(batch["x"].to(next(model.parameters()).dtype))
        loss = nn.functional.mse_loss(pred.float(), batch["y"])
        return loss, {"position": batch["position"].float().mean()}

    def steps_per_epoch(self, *, world_size, batch_size):
        return self.batches_per_epoch

    def validation_batches(self, *, rank, world_size):
        """16 fixed validation samples, ``x[rank::world_size]`` on rank ``rank``, one batch."""
        x = torch.randn(16, self.dim, generator=torch.Generator().manual_seed(self.data_seed + 1))
        mine = x[rank::world_size]
        return [{"x": mine, "y": mine @ self._target().T}] if len(mine) else []

    def validation_step(self, model, batch):
        pred = model(batch["x"].to(next(model.parameters()).dtype)).float()
        return {"mse": (nn.functional.mse_loss(pred, batch["y"], reduction="sum"),
                        batch["y"].numel())}

    def export(self, model, directory):
        os.makedirs(directory, exist_ok=True)
        state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
        safetensors.torch.save_file(state, os.path.join(directory, "model.safetensors"))
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump({"dim": self.dim, "hidden": self.hidden}, f)

    def describe(self):
        return {"name": self.name, **asdict(self)}

    def load_export(self, directory: str) -> nn.Module:
        """The exported MLP, rebuilt from ``model.safetensors`` alone."""
        model = self.build_model()
        model.load_state_dict(safetensors.torch.load_file(os.path.join(directory, "model.safetensors")))
        return model


# -- a multi-node Ray cluster on one machine ------------------------------------------------------

#: Run inside each node's new mount and PID namespaces, before ``ray start``: the node gets a
#: private /tmp, /dev/shm and HOME, and the cluster token in ~/.ray/auth_token as cluster.yaml's
#: file_mounts put it there. The token is read before /tmp (where a test keeps it) is covered.
_NODE_SETUP = r"""
set -eu
token=$(cat "$MADIS_NODE_TOKEN")
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs tmpfs /dev/shm
export HOME=/tmp/home
mkdir -p "$HOME/.ray"
(umask 077; printf '%s' "$token" > "$HOME/.ray/auth_token")
unset MADIS_NODE_TOKEN token
exec "$@"
"""


def _die_with_parent() -> None:
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class ClusterNode:
    """One ``ray start --block`` of a :class:`LocalCluster`: ``proc`` is the ``unshare`` process
    whose only child is the node's PID-namespace init (``ray start`` itself)."""

    name: str
    proc: "subprocess.Popen"
    log: str
    num_cpus: int
    resources: dict
    node_id: str = ""  #: Ray's id of the node, once alive

    def init_pid(self) -> int | None:
        import psutil

        try:
            children = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return None
        return children[0].pid if children else None


class LocalCluster:
    """A Ray cluster laid out like ``cluster.yaml`` on one machine, for tests and benchmarks.

    Every node - the head included - is a ``ray start --block`` of its own on 127.0.0.1, in new
    mount and PID namespaces: a private /tmp (Ray's session, sockets, spilled objects, unpacked
    ``--working-dir`` copies), /dev/shm (the object store) and HOME holding ``~/.ray/auth_token``.
    Nodes share only the network namespace (so S3 and each other, over loopback) and the files
    the machine already has (the checkout and its virtual environment, read as a node image
    would be). Token authentication is on (``RAY_AUTH_MODE=token``). Needs root and ``unshare``;
    run it inside a loopback-only network namespace (``scripts/loopback.sh``), since Ray binds
    every interface.

    Killing a node (:meth:`kill`) SIGKILLs its PID namespace's init: the kernel ends every process
    of the node at once, as when a machine is lost; its tmpfs mounts vanish with it.

    Args:
        token: the cluster's token file (read once per node start; see
            :func:`madis.stack.ensure_ray_token`).
        logs: a directory for each node's ``ray start`` output (``<name>.log``).
        env: extra environment of every node, e.g. S3 endpoint and credentials (what an instance
            profile gives a cloud node).
    Raises:
        RuntimeError: the checkout or its virtual environment lies under /tmp (hidden from the
            nodes by their private /tmp).
    """

    def __init__(self, token: str | os.PathLike, logs: str | os.PathLike,
                 env: dict[str, str] | None = None) -> None:
        import sys

        from madis.data.s3server import free_port

        self.token = os.path.abspath(token)
        with open(self.token) as f:  # fixed for the cluster's life: read once, not per poll
            self._bearer = f"Bearer {f.read().strip()}"
        self.logs = os.path.abspath(logs)
        os.makedirs(self.logs, exist_ok=True)
        self.bin = os.path.dirname(sys.executable)
        checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        for what, path in (("virtual environment", self.bin), ("checkout", checkout)):
            if os.path.realpath(path).startswith("/tmp/"):
                raise RuntimeError(f"the {what} is under /tmp ({path}), which every node of a "
                                   f"LocalCluster replaces by a private tmpfs: the nodes could "
                                   f"not start Ray from it; use a checkout outside /tmp")
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.nodes: dict[str, ClusterNode] = {}
        self._ports = 20000  # worker port ranges: one block of 1000 per node, never reused
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("RAY_", "AWS_")) and k != "HOME"}
        self.env = {**base, **(env or {}), "RAY_AUTH_MODE": "token", "PYTHONUNBUFFERED": "1",
                    "PATH": f"{self.bin}:{os.environ.get('PATH', '')}"}

    @property
    def address(self) -> str:
        """The head's dashboard and job server (``ray job submit --address``)."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def auth_headers(self) -> dict[str, str]:
        """The token as an HTTP header for this process's job and state-API clients: Ray reads
        ``RAY_AUTH_MODE`` once, when ``ray`` is imported, so setting it here would come too late
        in a process (a pytest session) that imported Ray before the cluster existed."""
        return {"Authorization": self._bearer}

    def jobs(self):
        """A :class:`ray.job_submission.JobSubmissionClient` of the head, authenticated."""
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.address, headers=self.auth_headers())

    def list_state(self, resource: str, filters: list | None = None) -> list:
        """Ray's state API (detail on, up to 10,000 entries), authenticated: ``resource`` is a
        :class:`ray.util.state.common.StateResource` value such as ``"nodes"`` or ``"actors"``."""
        from ray.util.state import StateApiClient
        from ray.util.state.common import ListApiOptions, StateResource

        client = StateApiClient(self.address, headers=self.auth_headers())
        return client.list(StateResource(resource), ListApiOptions(
            limit=10000, detail=True, filters=filters or []), raise_on_missing_output=False)

    def client_env(self) -> dict[str, str]:
        """Environment for the Ray CLI and the state API on this machine (outside the nodes)."""
        return {**self.env, "HOME": os.environ.get("HOME", "/root"),
                "RAY_AUTH_TOKEN_PATH": self.token}

    def start(self, name: str, *, head: bool = False, num_cpus: int = 0,
              resources: dict[str, float] | None = None, timeout_s: float = 300) -> ClusterNode:
        """Start node ``name`` (its ``ray start`` output in ``{logs}/{name}.log``) and wait until
        the head lists it alive.

        Raises:
            RuntimeError: the node exited or was not alive within ``timeout_s``; the message
                holds the end of its log.
        """
        import json
        import subprocess

        from madis.data.s3server import free_port

        resources = dict(resources or {})
        lo, self._ports = self._ports, self._ports + 1000
        cmd = [f"{self.bin}/ray", "start", "--block", "--node-ip-address=127.0.0.1",
               f"--num-cpus={num_cpus}", f"--resources={json.dumps(resources)}",
               f"--min-worker-port={lo}", f"--max-worker-port={lo + 999}",
               f"--dashboard-agent-listen-port={free_port()}",
               f"--labels=madis-node={name}", "--object-store-memory=100000000",
               "--disable-usage-stats"]
        if head:
            cmd += ["--head", f"--port={self.gcs_port}", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={self.dashboard_port}",
                    f"--ray-client-server-port={free_port()}"]
        else:
            cmd += [f"--address=127.0.0.1:{self.gcs_port}"]
        log = os.path.join(self.logs, f"{name}.log")
        with open(log, "a") as out:
            proc = subprocess.Popen(
                # --kill-child: the node dies with this unshare, which dies with this process
                ["unshare", "--mount", "--propagation", "private", "--pid", "--fork",
                 "--mount-proc", "--kill-child=SIGKILL", "bash", "-c", _NODE_SETUP, "_", *cmd],
                env={**self.env, "MADIS_NODE_TOKEN": self.token}, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)
        node = self.nodes[name] = ClusterNode(name, proc, log, num_cpus, resources)
        node.node_id = self.wait_alive(name, timeout_s)
        return node

    def _tail(self, name: str) -> str:
        with open(self.nodes[name].log, errors="replace") as f:
            return f.read()[-3000:]

    def alive_nodes(self) -> dict[str, str]:
        """The head's view: node name (its ``madis-node`` label) -> Ray node id, alive nodes only."""
        return {n.labels.get("madis-node", ""): n.node_id
                for n in self.list_state("nodes", [("state", "=", "ALIVE")])}

    def wait_alive(self, name: str, timeout_s: float = 300) -> str:
        """Wait until node ``name`` is alive in the head's view; returns its node id.

        Raises:
            RuntimeError: its ``ray start`` exited, or ``timeout_s`` passed.
        """
        import time

        deadline, last_error = time.monotonic() + timeout_s, None
        while True:
            if self.nodes[name].proc.poll() is not None:
                raise RuntimeError(f"node {name} exited ({self.nodes[name].proc.returncode}):\n"
                                   f"{self._tail(name)}")
            try:
                node_id = self.alive_nodes().get(name)
            except Exception as exn:  # noqa: BLE001 - the state API while the head starts
                node_id, last_error = None, exn
            if node_id:
                return node_id
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {name} not alive after {timeout_s:g} s (last state-API "
                                   f"error: {last_error!r}):\n{self._tail(name)}")
            time.sleep(1)

    def submit(self, submission_id: str, entrypoint: list[str], *, wait: bool = True,
               working_dir: str | os.PathLike | None = None, timeout_s: float = 1800
               ) -> "subprocess.CompletedProcess":
        """``ray job submit --no-wait --address ... --working-dir CHECKOUT --submission-id ID --
        ENTRYPOINT`` as a user types it (the job's driver runs on the head), then, with ``wait``,
        its status polled until it ends: on a loaded machine the CLI's log stream (a websocket)
        can drop while the job runs on.

        Returns:
            With ``wait``: the job's whole log as ``stdout`` and returncode 0 when it succeeded
            (1 otherwise); without: the CLI's own output and exit status.
        """
        import subprocess
        import time

        working_dir = working_dir or os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))))
        cmd = [f"{self.bin}/ray", "job", "submit", "--no-wait", "--address", self.address,
               "--working-dir", str(working_dir), "--submission-id", submission_id, "--",
               *entrypoint]
        for _ in range(12):
            out = subprocess.run(cmd, env=self.client_env(), cwd=working_dir, capture_output=True,
                                 text=True, timeout=600)
            # right after the head starts its job agent may not have registered yet
            if "No available agent" not in out.stdout + out.stderr:
                break
            time.sleep(5)
        if not wait or out.returncode != 0:
            return out
        status = self.wait_job(submission_id, timeout_s)
        return subprocess.CompletedProcess(cmd, 0 if status == "SUCCEEDED" else 1,
                                           self.job_logs(submission_id), f"job {status}")

    def job_status(self, submission_id: str) -> str:
        """``PENDING``, ``RUNNING``, ``SUCCEEDED``, ``FAILED`` or ``STOPPED``."""
        return str(self.jobs().get_job_status(submission_id).value)

    def job_logs(self, submission_id: str) -> str:
        return self.jobs().get_job_logs(submission_id)

    def wait_job(self, submission_id: str, timeout_s: float = 1800,
                 until: tuple[str, ...] = ("SUCCEEDED", "FAILED", "STOPPED")) -> str:
        """Poll the job's status until it is one of ``until``; returns it.

        Raises:
            TimeoutError: still not there after ``timeout_s``; the message holds the log's end.
        """
        import time

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                status = self.job_status(submission_id)
            except Exception as exn:  # noqa: BLE001 - a head too busy to answer in time
                status = f"unknown ({type(exn).__name__})"
            if status in until:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {submission_id} still {status} after {timeout_s:g} s:\n"
                                   f"{self.job_logs(submission_id)[-3000:]}")
            time.sleep(2)

    def stop_job(self, submission_id: str) -> None:
        self.jobs().stop_job(submission_id)

    def kill(self, name: str) -> None:
        """Lose node ``name`` at once: SIGKILL its PID namespace (every process of the node)."""
        import signal

        node = self.nodes.pop(name)
        pid = node.init_pid()
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        node.proc.wait(60)

    def stop(self) -> None:
        """Stop every node, worker nodes first: SIGTERM to ``ray start`` (which stops its node),
        then SIGKILL of the namespace after 20 s."""
        import signal
        import subprocess

        for name in reversed(list(self.nodes)):
            node = self.nodes[name]
            pid = node.init_pid()
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGTERM)
                    node.proc.wait(20)
                except ProcessLookupError:
                    pass
                except subprocess.TimeoutExpired:
                    self.kill(name)
                    continue
            node.proc.wait(60)
            del self.nodes[name]

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
