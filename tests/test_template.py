"""px-repack's % templates: parsing, functions, placeholders, named layouts."""

from __future__ import annotations

import hashlib

import pytest

from repack import Layout, NamedLayout, TemplateError, parse_template

SAG_SERIES_UID = "1.3.12.2.1107.5.2.19.45152.2013030808061520200285270.0.0.0"


def render(source: str, **values: str | None) -> str:
    return parse_template(source).render(values).text


def test_plain_fields_and_literals() -> None:
    assert render("%PatientID-%PatientName-x", PatientID="1449c1d", PatientName="anon") == (
        "1449c1d-anon-x"
    )


def test_keyword_is_the_longest_dictionary_prefix() -> None:
    # "%SOPInstanceUID.dcm": the keyword ends where the dictionary says.
    template = parse_template("%SOPInstanceUIDx.dcm")
    assert template.keywords == ("SOPInstanceUID",)
    assert template.render({"SOPInstanceUID": "1.2"}).text == "1.2x.dcm"


@pytest.mark.parametrize(
    ("source", "value", "expected"),
    [
        ("%_pad|5,0_SeriesNumber", "5", "00005"),
        ("%_pad|3,x_SeriesNumber", "5", "xx5"),
        ("%_pad|2,0_SeriesNumber", "12345", "12345"),  # never truncates
        ("%_pad|4_SeriesNumber", "7", "0007"),  # fill defaults to 0
        ("%_seahash|7_SeriesNumber", SAG_SERIES_UID, "a27cf06"),
        ("%_seahash_SeriesNumber", SAG_SERIES_UID, "a27cf06a782e3aad"),
        (
            "%_md5|4_SeriesNumber",
            "4412364",
            hashlib.md5(b"4412364", usedforsecurity=False).hexdigest()[:4],
        ),
        ("%_strmsk|**-*_SeriesNumber", "1234", "12-4"),
        ("%_nospc|-_SeriesNumber", "a b/c", "a-b-c"),
    ],
)
def test_functions(source: str, value: str, expected: str) -> None:
    assert render(source, SeriesNumber=value) == expected


def test_function_applies_to_its_own_element_only() -> None:
    # px-repack shifted functions positionally onto the next element found.
    text = render(
        "%PatientID-%_pad|5,0_SeriesNumber-%SeriesDescription",
        PatientID=None,
        SeriesNumber="5",
        SeriesDescription="T1",
    )
    assert text == "PatientID-00005-T1"


def test_missing_and_empty_render_as_keyword_and_are_reported() -> None:
    result = parse_template("%_pad|5,0_SeriesNumber-%SeriesDescription").render(
        {"SeriesNumber": None}
    )
    assert result.text == "SeriesNumber-SeriesDescription"
    assert result.missing == ("SeriesNumber", "SeriesDescription")


def test_rendered_text_is_sanitised() -> None:
    assert render("%StudyDescription", StudyDescription="MR-Brain w/o Contrast") == (
        "MR-Brain_w_o_Contrast"
    )


@pytest.mark.parametrize(
    "source",
    [
        "",
        "   ",
        "%NotAKeyword",
        "%-x",
        "%_pad|x,0_SeriesNumber",
        "%_pad|5,00_SeriesNumber",
        "%_pad|0_SeriesNumber",
        "%_seahash|0_SeriesInstanceUID",
        "%_md5|-1_PatientID",
        "%_name|patientID_PatientName",
        "%_bogus_PatientID",
        "%_strmsk_PatientID",
    ],
)
def test_invalid_templates_are_errors(source: str) -> None:
    with pytest.raises(TemplateError):
        parse_template(source)


def test_named_layouts() -> None:
    values = {
        "SeriesNumber": "5",
        "SeriesDescription": "SAG MPRAGE 220 FOV",
        "SeriesInstanceUID": SAG_SERIES_UID,
    }
    expected = {
        NamedLayout.RX_REPACK: "00005-SAG_MPRAGE_220_FOV-a27cf06",
        NamedLayout.PX_REPACK_3_10: "00005-SAG_MPRAGE_220_FOV",
        NamedLayout.PX_REPACK_3_12: "SAG_MPRAGE_220_FOV-a27cf06",
    }
    for name, series in expected.items():
        layout = Layout.named(name.value)
        assert layout.series.render(values).text == series
        assert layout.image.source == "%_pad|4,0_InstanceNumber-%SOPInstanceUID.dcm"
    assert Layout.named().name == "rx-repack"


def test_layout_overrides_and_unknown_layout() -> None:
    layout = Layout.named("px-repack-3.10", image="%SOPInstanceUID.dcm")
    assert layout.image.fields == ("SOPInstanceUID",)
    # px replaces every present keyword found in a field's text ("UID" is one).
    assert layout.image.keywords == ("SOPInstanceUID", "UID")
    assert layout.name == "px-repack-3.10+custom"
    with pytest.raises(TemplateError, match="unknown layout"):
        Layout.named("rx-repack-2")
