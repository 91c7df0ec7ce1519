"""What PACSes send: compressed transfer syntaxes, through the storescp we ship.

A PACS that holds JPEG 2000 (or JPEG, JPEG-LS, RLE, deflate) and cannot
convert it fails the push unless storescp accepts it. The storescp command
of ``docker-compose.yml`` (the same as the manifest's and the README's) is run
here as shipped, and one of pydicom's own test files per compressed transfer
syntax is sent to it by the real storescu: each must be repacked by the
service as it was sent (the same transfer syntax, the same pixel bytes).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pytest
import yaml
from pydicom.datadict import tag_for_keyword
from pydicom.uid import UID

from watcher._operations import storescp_command

from .conftest import ROOT
from .dcmtk import DcmtkError, send, storescp
from .helpers import FAST
from .listener import listener

pytestmark = [pytest.mark.dcmtk, pytest.mark.slow]

#: What storescu proposes for each compressed syntax (it proposes uncompressed ones unless
#: told): a PACS that holds such files and cannot convert them proposes just that.
PROPOSE = {
    "1.2.840.10008.1.2.4.90": "-xv",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "-xw",  # JPEG 2000
    "1.2.840.10008.1.2.4.80": "-xt",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "-xu",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.70": "-xs",  # JPEG lossless, first-order prediction
    "1.2.840.10008.1.2.4.50": "-xy",  # JPEG baseline
    "1.2.840.10008.1.2.4.51": "-xx",  # JPEG extended
    "1.2.840.10008.1.2.5": "-xr",  # RLE
    "1.2.840.10008.1.2.1.99": "-xd",  # deflated explicit VR little endian
}
#: What storescu needs to send a file and the service to repack it.
_REQUIRED = ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID")


def compressed_examples() -> dict[str, Path]:
    """One file of pydicom's test corpus per compressed transfer syntax it holds.

    Only files storescu can send: the SOP class and the UIDs present, stored as
    UI (dcmtk reads no UID stored as UN, as one corpus file has them).
    """
    found: dict[str, Path] = {}
    root = Path(pydicom.__file__).parent / "data" / "test_files"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sorted(root.rglob("*.dcm")):
            try:
                dataset = pydicom.dcmread(path)
            except Exception:  # noqa: S112 - a file pydicom cannot read is not a sample
                continue
            syntax = str(getattr(dataset.file_meta, "TransferSyntaxUID", ""))
            if syntax not in PROPOSE or syntax in found:
                continue
            stored = [dataset.get_item(tag_for_keyword(keyword)) for keyword in _REQUIRED]
            if all(element is not None and element.VR == "UI" for element in stored):
                found[syntax] = path
    return found


def shipped_storescp_args() -> list[str]:
    """storescp's options in docker-compose.yml, without its folder and port."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    command = list(compose["services"]["storescp"]["command"])
    assert command[0] == "storescp"
    options = command[1:-1]  # the port is last
    where = options.index("-od")
    return options[:where] + options[where + 2 :]


def _pixels(path: Path) -> tuple[str, bytes]:
    dataset = pydicom.dcmread(path)
    return str(dataset.file_meta.TransferSyntaxUID), bytes(dataset.PixelData)


def test_the_corpus_has_the_syntaxes_pacses_send() -> None:
    names = {UID(syntax).name for syntax in compressed_examples()}
    for family in ("JPEG 2000", "JPEG-LS", "JPEG Baseline", "RLE", "Deflated"):
        assert any(family in name for name in names), (family, names)


def test_every_compressed_syntax_is_received_and_repacked_as_sent(tmp_path: Path) -> None:
    """One file at a time (several corpus files are one instance in other syntaxes,
    so each later one is a re-send of an earlier): each repacked copy is checked
    before the next file is sent."""
    examples = compressed_examples()
    with listener(tmp_path, *FAST) as running:
        with storescp(running.incoming, *shipped_storescp_args()) as port:
            for number, (syntax, path) in enumerate(examples.items(), start=1):
                # Proposing only the file's own syntax (-R), as a PACS that holds it.
                send(port, [path], "-R", PROPOSE[syntax])
                running.wait_for(
                    lambda number=number: running.count("repack.done") == number,
                    30,
                    f"{path.name} repacked",
                )
                repacked = Path(running.of("repack.done")[-1]["dst"])
                assert _pixels(repacked) == _pixels(path), path.name
        assert running.count("repack.failed") == 0


def test_without_accept_all_storescp_refuses_them(tmp_path: Path) -> None:
    """The control: storescp's default proposals refuse a JPEG 2000 file outright."""
    jpeg2000 = compressed_examples()["1.2.840.10008.1.2.4.90"]
    with storescp(tmp_path / "incoming") as port, pytest.raises(DcmtkError):
        send(port, [jpeg2000], "-R", PROPOSE["1.2.840.10008.1.2.4.90"])


def test_the_supervised_storescp_accepts_them_unless_told_otherwise() -> None:
    assert "+xa" in storescp_command("/srv/incoming", "PYPX", "--fork -pm -sp", 11113)
    own_choice = storescp_command("/srv/incoming", "PYPX", "+xs", 11113)
    assert "+xa" not in own_choice
    assert "+xs" in own_choice
