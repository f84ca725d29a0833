"""A private RabbitMQ node for the scenarios that restart the broker.

The RabbitMQ at ``PREVIEW_TEST_AMQP_URL`` (127.0.0.1:5672) is shared with every other test
run on the machine: restarting it would break them.  :class:`RabbitServer` starts a node of
its own instead: ``rabbitmq-server`` with its own node name (``faults-<random>@localhost``),
AMQP and distribution ports picked free on 127.0.0.1, and its database, logs, config, plugin
list, Erlang cookie (``HOME``) and pid file in a temp directory; no plugin (management
off); ``guest`` may connect from loopback, as by default.  It registers its name with the
machine's ``epmd`` (which serves any node and is left alone) and nothing else outside its
directory.  :meth:`stop` (SIGTERM to its process group, as a service manager stops it) then
:meth:`start` restarts it on the same ports with its durable queues and persistent messages;
the ports are below the ephemeral range (:func:`outage.quiet_port`), so that nothing takes
them while it is down.

:class:`PrivateVhost` lets a :class:`~harness.Deployment` use the node's ``/`` vhost (the
node is the scenario's alone) in place of a vhost of the shared server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from .harness import VirtualHost
from .outage import quiet_port

#: Where Debian's package puts the scripts that run as the calling user (the ones on PATH,
#: /usr/sbin/rabbitmq-*, switch to the ``rabbitmq`` user and its shared node).
SCRIPTS = Path("/usr/lib/rabbitmq/bin")


def _script(name: str) -> str | None:
    beside = SCRIPTS / name
    if beside.exists():
        return str(beside)
    return shutil.which(name)


class RabbitServer:
    """A private ``rabbitmq-server`` node on free ports of 127.0.0.1 (see the module
    docstring).

    Raises:
      RuntimeError: from :meth:`start`: not installed, or the node did not accept AMQP
        connections within the timeout (the message ends with the node's log).
    """

    def __init__(self) -> None:
        server = _script("rabbitmq-server")
        ctl = _script("rabbitmqctl")
        if server is None or ctl is None:
            raise RuntimeError("rabbitmq-server is not installed")
        self.executable = server
        self.ctl_executable = ctl
        self.dir = Path(tempfile.mkdtemp(prefix="preview-faults-rabbit-"))
        self.node = f"faults-{uuid.uuid4().hex[:10]}@localhost"
        # Not ephemeral ports: the node must be able to listen on them again (quiet_port).
        self.port = quiet_port()
        self.dist_port = quiet_port()
        self.process: subprocess.Popen[bytes] | None = None
        for sub in ("mnesia", "log"):
            (self.dir / sub).mkdir()
        (self.dir / "enabled_plugins").write_text("[].\n")
        # Not /etc/rabbitmq/rabbitmq-env.conf: it names the shared node.
        (self.dir / "rabbitmq-env.conf").write_text("")
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\nloopback_users.guest = true\n"
        )
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))},
            # The Erlang cookie is made in $HOME at the first start.
            "HOME": str(self.dir),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.dir / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.dir / "rabbitmq.pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        self.starts = 0

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    @property
    def log(self) -> str:
        """The node's own log and what its start script printed (last starts)."""
        parts = []
        for path in (self.dir / "log" / f"{self.node}.log", self.dir / "stdout.log"):
            with contextlib.suppress(OSError):
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def answers(self) -> bool:
        """Whether an AMQP connection as guest opens now."""
        import pika  # optional: the rabbitmq extra

        params = pika.URLParameters(self.url)
        params.socket_timeout = 1
        params.connection_attempts = 1
        try:
            pika.BlockingConnection(params).close()
        except Exception:
            return False
        return True

    def start(self, *, timeout: float = 90) -> RabbitServer:
        """Start the node and wait until it accepts AMQP connections.

        Raises:
          RuntimeError: it exited, or did not answer within ``timeout`` seconds.
        """
        if self.process is not None and self.process.poll() is None:
            return self
        out = open(self.dir / "stdout.log", "ab")  # noqa: SIM115 - the child keeps it
        try:
            self.process = subprocess.Popen(
                [self.executable],
                env=self.env,
                cwd=self.dir,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            out.close()
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                if self.answers():
                    return self
            time.sleep(0.1)
        log = self.log[-3000:]
        self.stop()
        raise RuntimeError(f"rabbitmq-server node {self.node} did not start:\n{log}")

    def stop(self, *, timeout: float = 60) -> None:
        """SIGTERM the node's process group (RabbitMQ stops cleanly, flushing its queues),
        SIGKILL it if it lingers."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        # The shell script may exit before beam and erl_child_setup: take the group.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RabbitServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str] | None:
        """``rabbitmqctl -n <node> ...`` against this node (None if it could not run)."""
        try:
            return subprocess.run(
                [self.ctl_executable, "-n", self.node, *args],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None


class PrivateVhost(VirtualHost):
    """The ``/`` vhost of a :class:`RabbitServer`, in the shape a
    :class:`~harness.Deployment` takes as ``vhost=``: its URL, and its queue depths read
    with the node's own ``rabbitmqctl``.  Created and deleted with the node."""

    def __init__(self, server: RabbitServer) -> None:
        super().__init__()
        self.server = server
        self.name = "/"
        self.created = True

    @property
    def url(self) -> str:
        return self.server.url

    def create(self) -> PrivateVhost:
        return self

    def queue_depths(self) -> dict[str, int] | None:
        listed = self.server.ctl(
            "list_queues", "-p", "/", "name", "messages", "--quiet", "--no-table-headers"
        )
        if listed is None or listed.returncode != 0:
            return None
        depths = {}
        for line in listed.stdout.splitlines():
            fields = line.split()
            if len(fields) == 2 and fields[1].isdigit():
                depths[fields[0]] = int(fields[1])
        return depths

    def delete(self) -> None:
        """Nothing to do: the vhost goes with the node's directory."""
