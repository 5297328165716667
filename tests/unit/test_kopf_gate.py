"""The counting start-up gate keeps Kopf's ToggleSet semantics (all/any over its members)."""

from __future__ import annotations

import asyncio

import pytest

from ckpt_operator.kube.kopf_gate import CountingToggleSet


async def _settles(task: asyncio.Task[None]) -> bool:
    await asyncio.sleep(0.01)
    return task.done()


def test_all_opens_only_when_every_member_is_on_or_dropped() -> None:
    async def scenario() -> None:
        gate = CountingToggleSet(all)
        assert gate.is_on()  # no members
        a = await gate.make_toggle(name="a")
        b = await gate.make_toggle(name="b")
        waiter = asyncio.create_task(gate.wait_for(True))
        assert not await _settles(waiter)
        await gate.drop_toggle(a)
        assert not await _settles(waiter) and gate.is_off()
        await b.turn_to(True)
        assert await _settles(waiter) and gate.is_on()
        closing = asyncio.create_task(gate.wait_for(False))
        c = await gate.make_toggle(False)
        assert await _settles(closing) and gate.is_off()
        await gate.drop_toggles([b, c])
        assert gate.is_on() and len(gate) == 0

    asyncio.run(scenario())


def test_any_is_on_while_one_member_is_on() -> None:
    async def scenario() -> None:
        gate = CountingToggleSet(any)
        assert gate.is_off()
        a = await gate.make_toggle(True)
        waiter = asyncio.create_task(gate.wait_for(False))
        assert not await _settles(waiter)
        await a.turn_to(True)  # no change
        b = await gate.make_toggle(True)
        await a.turn_to(False)
        assert not await _settles(waiter)
        await gate.drop_toggle(b)
        assert await _settles(waiter) and gate.is_off()
        await gate.drop_toggle(b)  # twice: nothing to drop

    asyncio.run(scenario())


def test_only_all_and_any_can_be_counted() -> None:
    with pytest.raises(ValueError, match="all and any"):
        CountingToggleSet(lambda states: sum(states) > 1)
