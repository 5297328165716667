"""The sweep's classification of store entries."""

from __future__ import annotations

from ckpt_operator.policy.orphans import orphan_kind


def kind(entry: str, *, manifest: bool, run_deleted: bool = False) -> str | None:
    return orphan_kind(
        entry,
        has_manifest=lambda _: manifest,
        registered=lambda _: True,
        run_deleted=run_deleted,
    )


def test_a_directory_without_its_manifest_is_uncommitted_whatever_its_format() -> None:
    for entry in ("step-0000000200.attempt-1", "step-0000000200.attempt-1.dcp"):
        assert kind(entry, manifest=False) == "uncommitted", entry
        assert kind(entry, manifest=True) is None, entry
    # A tar carries its manifest inside: committed by its name alone.
    assert kind("step-0000000200.attempt-1.tar", manifest=False) is None


def test_entries_that_are_not_ours_are_never_touched() -> None:
    for entry in ("notes.txt", "step-200", ".."):
        assert kind(entry, manifest=False, run_deleted=True) is None
