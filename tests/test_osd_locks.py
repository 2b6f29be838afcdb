"""osd.locks.KeyedLocks: one holder per key, waiters in order, no scheduler
turn for a free key, and an empty table once everyone has left."""

import trio
import trio.testing

from osd.locks import KeyedLocks


async def test_a_free_key_is_taken_without_a_checkpoint():
    """No scheduler turn: even inside a cancelled scope (where every checkpoint
    raises Cancelled) a free key is taken, the body runs and the key is freed."""
    locks = KeyedLocks()
    reached = []
    with trio.CancelScope() as scope:
        scope.cancel()
        async with locks.hold("a"):
            reached.append(locks.busy("a"))
    assert reached == [True] and not locks.busy("a")


async def test_holders_of_one_key_take_turns_in_order():
    locks = KeyedLocks()
    order = []
    release = trio.Event()

    async def holder(name):
        async with locks.hold("k"):
            order.append(("in", name))
            await release.wait()
            order.append(("out", name))

    async with trio.open_nursery() as nursery:
        for name in ("first", "second", "third"):
            nursery.start_soon(holder, name)
            await trio.testing.wait_all_tasks_blocked()
        assert order == [("in", "first")]          # the others wait
        release.set()
    assert order == [("in", "first"), ("out", "first"), ("in", "second"),
                     ("out", "second"), ("in", "third"), ("out", "third")]
    assert not locks.busy("k")


async def test_other_keys_do_not_wait_and_a_cancelled_waiter_leaves_no_entry():
    locks = KeyedLocks()
    held = trio.Event()
    done = trio.Event()

    async def long_holder():
        async with locks.hold("k"):
            held.set()
            await done.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(long_holder)
        await held.wait()
        async with locks.hold("other"):    # another key: at once
            pass
        given_up = trio.CancelScope()
        outcome = []

        async def waiter():
            with given_up:
                async with locks.hold("k"):
                    outcome.append("took a held key")
            outcome.append("cancelled" if given_up.cancelled_caught else "left")
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()   # queued behind the holder
        assert locks.busy("k") and not outcome
        given_up.cancel()                             # a waiter given up on
        await trio.testing.wait_all_tasks_blocked()
        assert outcome == ["cancelled"]
        done.set()
    assert not locks.busy("k") and not locks.busy("other")


async def test_an_error_inside_hands_the_key_to_the_waiter():
    """The key is released on an error even while another task waits for it
    (the entry, and so its lock, stays: only release lets the waiter in)."""
    locks = KeyedLocks()
    entered = trio.Event()
    waiter_in = trio.Event()

    async def failing_holder():
        try:
            async with locks.hold("k"):
                entered.set()
                await trio.testing.wait_all_tasks_blocked()   # the waiter has queued
                raise KeyError("inside")
        except KeyError:
            pass

    async def waiter():
        await entered.wait()
        async with locks.hold("k"):
            waiter_in.set()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(failing_holder)
            nursery.start_soon(waiter)
    assert waiter_in.is_set() and not locks.busy("k")
