"""A base for the things tests start and stop around a ``with`` block."""

from __future__ import annotations

from typing import Self


class Started:
    """``with thing:`` starts it and stops it again, whatever happens inside."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
