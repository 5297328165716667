"""Store names round-trip, sort by step, and never collide across attempts or kinds."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ckpt_operator.storage import layout

names = st.builds(
    layout.CheckpointName,
    step=st.integers(0, 10**10 - 1),
    attempt=st.integers(0, 10**4),
    format=st.sampled_from(["dir", "tar", "dcp"]),
    kind=st.sampled_from(["full", "weights"]),
)


@given(names)
def test_committed_names_round_trip(name: layout.CheckpointName) -> None:
    assert layout.parse_committed(name.path) == name
    assert layout.parse_committed(f"some/prefix/{name.path}/") == name
    assert not layout.is_temporary(name.path)


@given(names, st.text(alphabet="0123456789abcdef", min_size=1, max_size=12))
def test_temporaries_are_never_taken_for_committed(
    name: layout.CheckpointName, unique: str
) -> None:
    tmp = name.temporary_path(unique)
    assert layout.is_temporary(tmp)
    assert layout.parse_committed(tmp) is None


@given(names, names)
def test_distinct_checkpoints_get_distinct_paths_and_objects(
    a: layout.CheckpointName, b: layout.CheckpointName
) -> None:
    if (a.step, a.attempt, a.kind) != (b.step, b.attempt, b.kind):
        assert a.object_name("run") != b.object_name("run")
        assert a.path != b.path


def test_listing_order_is_step_order() -> None:
    steps = [5, 100, 20, 3000]
    paths = sorted(layout.CheckpointName(s, 0, "dir").path for s in steps)
    assert [layout.parse_committed(p).step for p in paths] == sorted(steps)  # type: ignore[union-attr]


def test_directory_formats_and_suffixes() -> None:
    dcp = layout.CheckpointName(7, 1, "dcp")
    assert dcp.path == "step-0000000007.attempt-1.dcp" and dcp.is_directory
    assert layout.CheckpointName(7, 1, "dir").is_directory
    assert not layout.CheckpointName(7, 1, "tar").is_directory


def test_foreign_entries_are_ignored() -> None:
    for entry in (
        "README",
        "step-12.attempt-0",
        "step-0000000001.attempt-x",
        "step-0000000001.attempt-0.zip",
        "MANIFEST.json",
    ):
        assert layout.parse_committed(entry) is None
