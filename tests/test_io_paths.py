"""ImageRoot: whatever path a corpus names, the file read lies inside the root (or the row is refused)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curate.io import ImageRoot, PathError

SEGMENTS = ["a", "b", "img.png", "..", ".", "", "up", "down", "loop", "out", "~", "a b"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """root/{a/img.png, b/, down -> a, up -> .., out -> /outside dir, loop -> loop}; outside/img.png."""
    base = tmp_path_factory.mktemp("tree")
    root, outside = base / "root", base / "outside"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    outside.mkdir()
    (root / "a" / "img.png").write_bytes(b"inside")
    (outside / "img.png").write_bytes(b"outside")
    os.symlink(root / "a", root / "down")
    os.symlink(root, root / "a" / "up")
    os.symlink(base, root / "b" / "up")
    os.symlink(outside, root / "out")
    os.symlink(root / "loop", root / "loop")
    return ImageRoot.at(root), outside


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=6), absolute=st.booleans())
def test_reads_never_leave_the_root(tree, parts, absolute):
    root, outside = tree
    ref = "/".join(parts)
    if absolute:
        ref = os.path.join(root.root, ref)
    try:
        data, real = root.read(ref)
    except PathError:
        return
    assert real == os.path.realpath(real) and os.path.commonpath([real, root.root]) == root.root
    assert data == b"inside"


def test_reads_inside_and_refuses_outside(tree):
    root, outside = tree
    assert root.read("down/img.png") == (b"inside", os.path.join(root.root, "a", "img.png"))
    assert root.read("a/up/a/img.png")[0] == b"inside"  # a symlink loop back into the root is fine
    for ref, reason in [
        ("out/img.png", "through a symlink"),
        ("b/up/outside/img.png", "through a symlink"),
        (str(outside / "img.png"), "outside the image root"),
        ("a/../a/img.png", "contains '..'"),
        ("loop", "cannot read"),
        ("a", "cannot read"),  # a directory
        ("file:///etc/passwd", "URL"),
        ("  ", "empty"),
    ]:
        with pytest.raises(PathError, match=reason):
            root.read(ref)
