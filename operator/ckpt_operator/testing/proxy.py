"""A TCP proxy between a client (the operator) and the API server, to break the network.

:meth:`Proxy.cut` aborts every connection (watches drop, requests in flight fail), like a
load balancer restarting; :meth:`Proxy.partition` also refuses new ones until healed, like a
network partition; :meth:`Proxy.freeze` keeps connections open but forwards nothing, the silent
drop a stateful middlebox causes. TLS passes through untouched (the API server's certificate
names 127.0.0.1, so it stays valid on the proxy's port).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

from ckpt_operator.testing.lifecycle import Started

T = TypeVar("T")


class Proxy(Started):
    """Forwards ``127.0.0.1:<port>`` to ``server`` (an ``https://host:port`` URL)."""

    def __init__(self, server: str) -> None:
        parts = urlsplit(server)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 443)
        self.port = 0
        self.refusing = False
        self._thaw: asyncio.Event | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        self._call(self._listen())

    def stop(self) -> None:
        if self._thread.is_alive():
            self._call(self._close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def kubeconfig(self, source: Path, dest: Path) -> Path:
        """A copy of ``source`` whose cluster is reached through the proxy."""
        config = yaml.safe_load(source.read_text())
        for cluster in config["clusters"]:
            cluster["cluster"]["server"] = self.url
        dest.write_text(yaml.safe_dump(config))
        dest.chmod(0o600)
        return dest

    def cut(self) -> int:
        """Abort every open connection; returns how many there were."""
        return self._call(self._abort())

    def partition(self) -> None:
        """Cut, and refuse new connections until :meth:`heal`."""
        self.refusing = True
        self.cut()

    def heal(self) -> None:
        self.refusing = False

    def freeze(self) -> None:
        """Forward nothing, in either direction, until :meth:`thaw`; connections stay open."""
        self._call(self._set_frozen(True))

    def thaw(self) -> None:
        self._call(self._set_frozen(False))

    # --- on the proxy's loop ------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        await self._abort()
        if self._server is not None:
            self._server.close()

    async def _abort(self) -> int:
        count = len(self._connections)
        for writer in list(self._connections):
            writer.transport.abort()
        self._connections.clear()
        return count // 2

    async def _set_frozen(self, frozen: bool) -> None:
        if frozen and self._thaw is None:
            self._thaw = asyncio.Event()
        elif not frozen and self._thaw is not None:
            self._thaw.set()
            self._thaw = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._connections |= {writer, up_writer}
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._connections.discard(w)
                w.transport.abort()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await src.read(1 << 16):
                while self._thaw is not None:
                    await self._thaw.wait()
                dst.write(data)
                await dst.drain()
        dst.transport.abort()
