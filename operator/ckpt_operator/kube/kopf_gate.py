"""Kopf's start-up gate ("every index is listed"), made linear in the number of objects.

Kopf holds every object's handlers until all indexes are listed: each object gets a toggle in
one ``ToggleSet(all)`` while it is being indexed, and its worker then waits on that set. Kopf's
set notifies every waiter whenever any toggle is added or dropped, so N objects cost N² wake-ups
before the first handler runs: 293 s with 5,000 Checkpoints on a 2-core host
(``benchmarks/scale.py``), hours with 50,000. Every waiter of a set waits for the set's overall
state (Kopf never waits on one member of it), so notifying only when that state flips is
equivalent; with the members counted, deciding the state is O(1) too.

:func:`install` replaces ``ToggleSet`` in Kopf's module before the operator starts (Kopf builds
its sets when it runs); Kopf is pinned to the minor version this was checked against
(pyproject.toml). ``benchmarks/kopf_gate.py`` measures both side by side.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from kopf._cogs.aiokits import aiotoggles

Aggregate = Callable[[Iterable[bool]], bool]


class _Member(aiotoggles.Toggle):
    """A toggle of a :class:`CountingToggleSet`: tells its set when it turns."""

    def __init__(self, state: bool, *, name: str | None, owner: CountingToggleSet) -> None:
        super().__init__(state, name=name, condition=owner._condition)
        self._owner = owner

    async def turn_to(self, __state: bool) -> None:
        async with self._condition:
            if self._state != bool(__state):
                self._state = bool(__state)
                self._owner._count(1 if self._state else -1)


class CountingToggleSet(aiotoggles.ToggleSet):
    """``ToggleSet(all)`` / ``ToggleSet(any)`` that counts its members that are on and wakes
    its waiters only when its overall state changes."""

    def __init__(self, fn: Aggregate) -> None:
        if fn is not all and fn is not any:
            raise ValueError(f"only all and any can be counted, not {fn!r}")
        super().__init__(fn)
        self._on = 0
        self._was = self.is_on()

    def is_on(self) -> bool:
        if self._fn is all:
            return self._on == len(self._toggles)
        return self._on > 0

    def _count(self, delta: int) -> None:
        """Called with the condition's lock held."""
        self._on += delta
        now = self.is_on()
        if now != self._was:
            self._was = now
            self._condition.notify_all()

    async def make_toggle(self, __val: bool = False, *, name: str | None = None) -> _Member:
        toggle = _Member(__val, name=name, owner=self)
        async with self._condition:
            self._toggles.add(toggle)
            self._count(1 if toggle.is_on() else 0)
        return toggle

    async def drop_toggle(self, toggle: aiotoggles.Toggle) -> None:
        await self.drop_toggles([toggle])

    async def drop_toggles(self, toggles: Iterable[aiotoggles.Toggle]) -> None:
        async with self._condition:
            gone = [t for t in toggles if t in self._toggles]
            self._toggles.difference_update(gone)
            self._count(-sum(1 for t in gone if t.is_on()))


def install() -> None:
    """Make Kopf build :class:`CountingToggleSet` instead of its own (idempotent)."""
    aiotoggles.ToggleSet = CountingToggleSet  # type: ignore[misc]
