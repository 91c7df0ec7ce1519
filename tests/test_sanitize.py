"""Sanitising and confinement (nothing built from tag values escapes its folder); SeaHash."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from repack import Layout, plan_placement
from repack._dicom import Instance
from repack._sanitize import MAX_COMPONENT_BYTES, is_safe_name, safe_log_name, seahash
from repack.plumbing import sanitize_component, seahash_hex

from .conftest import make_dataset


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("MR-Brain w/o Contrast", "MR-Brain_w_o_Contrast"),
        ("a  b\tc", "a_b_c"),
        ("é€漢字", "_"),
        ("x\x00y", "x_y"),
        ("", "_"),
        (".", "_"),
        ("..", "__"),
        ("../../etc", ".._.._etc"),
        ("1.2.840", "1.2.840"),
    ],
)
def test_px_sanitising_rule(raw: str, expected: str) -> None:
    assert sanitize_component(raw) == expected


def test_long_components_are_shortened_uniquely_keeping_extension() -> None:
    first = sanitize_component("A" * 400 + "1.dcm")
    second = sanitize_component("A" * 400 + "2.dcm")
    assert len(first.encode()) <= MAX_COMPONENT_BYTES
    assert first != second
    assert first.endswith(".dcm")


@given(st.text())
def test_sanitised_component_is_always_one_safe_name(text: str) -> None:
    component = sanitize_component(text)
    assert component not in ("", ".", "..")
    assert "/" not in component
    assert "\x00" not in component
    assert len(component.encode()) <= MAX_COMPONENT_BYTES


@pytest.mark.parametrize("name", ["1449c1d", "John Smith 123", "1.2.840.1", "ÄÖÜ-1"])
def test_ordinary_ids_keep_their_exact_names(name: str) -> None:
    assert is_safe_name(name, suffix=".json")
    assert safe_log_name(name, suffix=".json") == name


@pytest.mark.parametrize(
    "name", ["../../x", "A/B", "/etc/passwd", "..", ".", "", "a\x00b", "a\nb", "x" * 300]
)
def test_hostile_ids_are_sanitised(name: str) -> None:
    safe = safe_log_name(name, suffix="-meta.json")
    assert is_safe_name(safe, suffix="-meta.json")
    assert "/" not in safe


_VALUE = st.one_of(
    st.none(), st.text(max_size=300), st.sampled_from(["..", ".", "/", "../..", "\x00"])
)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom complains about hostile values
@given(
    patient=_VALUE,
    name=_VALUE,
    study=_VALUE,
    series=_VALUE,
    sop=st.text(min_size=1, max_size=300),
)
def test_rendered_path_always_stays_inside_the_data_dir(
    patient: str | None, name: str | None, study: str | None, series: str | None, sop: str
) -> None:
    ds = make_dataset(
        PatientID=patient,
        PatientName=name,
        StudyDescription=study,
        SeriesDescription=series,
        SOPInstanceUID=sop.replace("\\", ""),
    )
    relative, _ = plan_placement(Instance(ds), Layout.named())
    datadir = Path("/data")
    target = os.path.normpath(datadir / relative)
    assert target.startswith("/data/")
    parts = relative.parts
    assert len(parts) == 4
    assert all(len(p.encode()) <= MAX_COMPONENT_BYTES and p not in (".", "..") for p in parts)


# -- SeaHash: the contract's check value and the reference crate's vectors


def test_contract_check_value() -> None:
    uid = "1.3.12.2.1107.5.2.19.45152.2013030808061520200285270.0.0.0"
    assert seahash_hex(uid) == "a27cf06a782e3aad"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # From the seahash crate's documentation and tests.
        (b"to be or not to be", 1988685042348123509),
        (b"", 14492805990617963705),
    ],
)
def test_reference_vectors(data: bytes, expected: int) -> None:
    assert seahash(data) == expected


def test_hex_is_not_zero_padded() -> None:
    # rx-repack formats with {:x}: a hash below 2**60 has fewer than 16 digits.
    for i in range(5000):
        value = seahash(str(i).encode())
        if value < 2**60:
            assert seahash_hex(str(i)) == format(value, "x")
            assert len(seahash_hex(str(i))) < 16
            return
    pytest.fail("no small hash found in the sample")


@given(st.binary(max_size=64))
def test_hash_is_64_bit_and_length_sensitive(data: bytes) -> None:
    value = seahash(data)
    assert 0 <= value < 2**64
    assert seahash(data) == value
    # The length is folded in, so a trailing zero byte always changes the hash.
    assert seahash(data + b"\x00") != value


def _shorten_before(name: str, limit: int) -> str:
    """The shortener of path components as it was before it became :func:`shorten`."""
    from repack._sanitize import seahash  # noqa: PLC0415

    encoded = name.encode("utf-8")
    if len(encoded) <= limit:
        return name
    digest = "-" + format(seahash(encoded), "016x")
    stem, dot, extension = name.rpartition(".")
    suffix = dot + extension if stem and len(extension) <= 8 and dot else ""
    room = limit - len(digest) - len(suffix.encode("utf-8"))
    head = (stem if suffix else name).encode("utf-8")[:room].decode("utf-8", "ignore")
    return head + digest + suffix


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=400),
       st.integers(min_value=40, max_value=255))  # fmt: skip
def test_one_shortener_names_components_as_before(name: str, limit: int) -> None:
    from repack._sanitize import _shorten  # noqa: PLC0415

    assert _shorten(name, limit) == _shorten_before(name, limit)


@given(st.binary(max_size=600), st.integers(min_value=30, max_value=255))
def test_a_shortened_name_fits_and_keeps_long_names_apart(raw: bytes, limit: int) -> None:
    from repack.plumbing import shorten  # noqa: PLC0415

    short = shorten(raw, limit)
    assert len(short) <= limit
    if len(raw) <= limit:
        assert short == raw
    else:
        assert shorten(raw + b"x", limit) != short
