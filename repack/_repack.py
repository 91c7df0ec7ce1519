"""Repacking one instance: the order of effects that makes it crash-safe.

At every instant the instance is either still at its source or completely
repacked with all its logs: (1) read and check the header (nothing written
for a bad file); (2) place the data file (a link or a synced copy, published
atomically); (3) write the logs (each atomic; create-once files by a link);
(4) only then, in move mode, remove the source. A crash before (4) leaves the
source; repacking it again rewrites the same files, with no duplicate.
:class:`Repacker` remembers the once-per-series files it wrote, so a service
does not check them again for every instance.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._dicom import REQUIRED_KEYWORDS, Instance, read_source
from ._errors import RefusedInstanceError
from ._logs import (
    PATIENT_FIELDS,
    SERIES_FIELDS,
    STUDY_FIELDS,
    LogPaths,
    image_document,
    json_bytes,
    patient_document,
    series_meta_document,
    study_meta_document,
    study_series_document,
)
from ._memo import Memo
from ._sanitize import token
from ._source import SourceFile, open_path
from ._store import Store
from ._template import Layout
from ._values import ValueCache

_SERIES_PACK = json_bytes({"seriesPack": True})
#: Per-series files known to exist; forgetting only costs a stat, so memory stays flat.
_REMEMBER_AT_MOST = 4_096


@dataclass(frozen=True)
class MissingElement:
    """An element a template wanted and did not find (rx-repack's ``missing``)."""

    tag: str
    name: str
    error: str

    def as_dict(self) -> dict[str, str]:
        return {"tag": self.tag, "name": self.name, "error": self.error}


def _missing_element(instance: Instance, keyword: str) -> MissingElement:
    from pydicom.datadict import tag_for_keyword  # noqa: PLC0415 - keep the pure import light

    tag = int(tag_for_keyword(keyword) or 0)
    present = tag in instance.dataset
    return MissingElement(
        tag=f"({tag >> 16:04X},{tag & 0xFFFF:04X})",
        name=keyword,
        error="empty value" if present else "element not present",
    )


#: The file meta element where storescp records who sent an instance (the calling AE title).
SENDER_KEYWORD = "SourceApplicationEntityTitle"


def sender_folder(instance: Instance, fallback: str) -> str:
    """The folder of the sender of ``instance``: its calling AE title, as storescp records
    it in the file meta (0002,0016), anything but a letter, a digit, ``-`` and ``_`` made
    ``_`` (the rule of a LONK subject's token, so the two names agree); ``fallback`` when
    the file names no sender, or more than an AE title can hold. Pure: the same instance,
    the same folder."""
    title = instance.text(SENDER_KEYWORD)
    if title is None or len(title) > 16:  # an AE title has at most 16 characters
        return fallback
    return token(title)


def plan_placement(instance: Instance, layout: Layout) -> tuple[Path, tuple[MissingElement, ...]]:
    """Where ``instance`` goes, relative to the data dir, and what the templates missed.

    Pure (no disk): the four templates of ``layout`` rendered for ``instance``.
    """
    values: Mapping[str, str | None] = {k: instance.text(k) for k in layout.keywords}
    if layout.px:
        # px-repack's rules: str() of each present element, fields left as text.
        present = {k: instance.px_value(k) for k in layout.keywords if instance.present(k)}
        root, study, series, image = (
            t.render_px(
                {k: present[k] for k in t.keywords if k in present},
                tuple(k for k in t.fields if values[k] is None),
            )
            for t in layout.templates
        )
    else:
        root, study, series, image = (t.render(values) for t in layout.templates)
    missing_keywords = dict.fromkeys(k for r in (root, study, series, image) for k in r.missing)
    missing = tuple(_missing_element(instance, k) for k in missing_keywords)
    return Path(root.text, study.text, series.text, image.text), missing


@dataclass(frozen=True)
class Repacked:
    """What happened to one instance."""

    src: Path
    dst: Path
    size: int
    patient_id: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    series_dir: Path
    missing: tuple[MissingElement, ...] = ()
    source_removed: bool = False
    #: The series' ``studyData/<Study>-series/<Series>-meta.json`` (its tag table), if logged.
    series_log: str = ""
    duration_ms: float = 0.0
    #: What the event should say about the instance as sent (not an error).
    notes: tuple[str, ...] = ()
    #: pydicom's warnings about this file, each once (added by the caller that caught them).
    warnings: tuple[str, ...] = ()

    def event_fields(self) -> dict[str, Any]:
        """The fields of the ``repack.done`` event line (rx-repack's keys)."""
        fields: dict[str, Any] = {
            "src": str(self.src),
            "dst": str(self.dst),
            "size": self.size,
            "PatientID": self.patient_id,
            "SeriesInstanceUID": self.series_instance_uid,
            "duration_ms": round(self.duration_ms, 3),
        }
        if self.missing:
            fields["missing"] = [m.as_dict() for m in self.missing]
        if self.notes:
            fields["notes"] = list(self.notes)
        return fields


_NO_PIXELS = (
    "an image storage instance without pixel data (and without an Image Pixel module):"
    " repacked as sent, as px-repack does"
)


class Repacker:
    """Repacks instances into ``datadir`` and writes their logs into ``logdir``.

    Thread-safe; several processes may share the same folders. ``move``
    removes each source once it is fully repacked (``--cleanup``); otherwise
    the source is left where it is. ``logdir=None`` writes no logs.
    """

    def __init__(
        self,
        datadir: str | os.PathLike[str],
        logdir: str | os.PathLike[str] | None = None,
        layout: Layout | None = None,
        *,
        move: bool = False,
        fsync: bool = True,
        admit: Callable[[Instance], str | None] | None = None,
        by_sender: str | None = None,
        lease_test: bool = False,
    ) -> None:
        """``admit(instance)``: why the instance may not be placed (then
        :class:`RefusedInstanceError`, and nothing is written), or None.
        ``by_sender``: place each instance below a folder of its sender
        (:func:`sender_folder`), this name for a file that names none.
        ``lease_test``: in move mode, ask who else holds a source with a lease
        (:meth:`SourceFile.others`) before linking it; the process must ignore
        ``SIGIO`` (a lease break's default action ends it). Without it, every
        source is copied, never linked (the safe choice when nobody can tell)."""
        self.admit = admit
        self.by_sender = by_sender
        self.lease_test = lease_test
        self.datadir = Path(os.path.abspath(datadir))
        self.logdir = Path(os.path.abspath(logdir)) if logdir is not None else None
        self.layout = layout or Layout.named()
        self.move = move
        self._store = Store(self.logdir or self.datadir, fsync=fsync)
        # Everything the templates, the logs and the event read: the fast header
        # path reads just these (anything else is read when first asked for).
        self._keywords = tuple(
            sorted(
                self.layout.keywords.union(
                    PATIENT_FIELDS,
                    STUDY_FIELDS,
                    SERIES_FIELDS,
                    REQUIRED_KEYWORDS,
                    ("SOPInstanceUID", "SpecificCharacterSet", "Rows"),
                    (SENDER_KEYWORD,) if by_sender is not None else (),
                )
            )
        )
        # Log files known to exist (a Memo of paths; forgetting costs a stat).
        self._written: Memo[Path | tuple[Path, str], bool] = Memo(_REMEMBER_AT_MOST)
        # Built once per series: the same path objects (and their cached hashes)
        # serve every instance.
        self._series_dirs: Memo[Path, Path] = Memo(_REMEMBER_AT_MOST)
        self._log_paths: Memo[tuple[str, str, str], LogPaths] = Memo(_REMEMBER_AT_MOST)
        # Most values are the same bytes in every instance of a series: converted once.
        self._values = ValueCache()

    def _series_dir(self, relative: Path) -> Path:
        return self._series_dirs.made(relative.parent, lambda: self.datadir / relative.parent)

    def _paths_of(self, instance: Instance, logdir: Path) -> LogPaths:
        key = (
            instance.px_value("PatientID"),
            instance.px_value("StudyInstanceUID"),
            instance.px_value("SeriesInstanceUID"),
        )
        return self._log_paths.made(key, lambda: LogPaths.of(logdir, instance))

    def repack(self, src: str | os.PathLike[str]) -> Repacked:
        """Repack the file at ``src`` (a path a user gave); raise a :class:`RepackError`.

        The file itself must be a regular file, not a link. A service that
        reads an untrusted folder opens its files with
        :func:`repack.plumbing.open_beneath` and calls :meth:`repack_source`.
        """
        with open_path(os.path.abspath(src)) as source:
            return self.repack_source(source)

    def repack_source(self, source: SourceFile) -> Repacked:
        """Repack an opened input file; raise a :class:`RepackError` if it cannot be.

        In move mode, a source nobody has asked about yet is asked who else
        holds it (:meth:`SourceFile.others`): anything shared is copied, never
        linked. A caller that asked already (the service's claim) is not asked again.
        """
        started = time.perf_counter()
        if self.move and self.lease_test and source.open_elsewhere is None:
            source.others()
        instance = read_source(source, self._keywords, self._values)
        refused = self.admit(instance) if self.admit is not None else None
        if refused is not None:
            raise RefusedInstanceError(
                refused,
                series_uid=instance.text("SeriesInstanceUID"),
                sender=sender_folder(instance, self.by_sender) if self.by_sender else None,
            )
        series_dir, destination, missing = self._target(instance)
        generation = self._store.generation
        stat = self._store.place(source, destination, link=self.move, folder=series_dir)
        if self.logdir is not None:
            self._write_logs(instance, series_dir, destination, stat)
            if self._store.generation != generation:
                # A folder was removed under us: what we remember writing may be gone.
                self._written.clear()
                self._write_logs(instance, series_dir, destination, stat)
        removed = self.move and source.remove()
        logs = self._paths_of(instance, self.logdir) if self.logdir is not None else None
        return Repacked(
            src=source.path,
            dst=destination,
            size=stat.st_size,
            patient_id=instance.px_value("PatientID"),
            study_instance_uid=instance.px_value("StudyInstanceUID"),
            series_instance_uid=instance.px_value("SeriesInstanceUID"),
            sop_instance_uid=instance.px_value("SOPInstanceUID"),
            series_dir=series_dir,
            missing=missing,
            source_removed=removed,
            series_log=str(logs.study_series) if logs is not None else "",
            duration_ms=(time.perf_counter() - started) * 1000,
            notes=(_NO_PIXELS,) if instance.image_without_pixels else (),
        )

    def rehearse(self, source: SourceFile) -> None:
        """Everything :meth:`repack_source` does but writing: read, place, render the logs.

        A fresh process spends its first repack importing and initialising
        half of pydicom; a service rehearses once on a made-up instance to
        take that pause before the first real file, with no folder touched.
        """
        instance = read_source(source, self._keywords)
        series_dir, destination, _ = self._target(instance)
        if self.logdir is not None:
            LogPaths.of(self.logdir, instance).image(destination.name)
            for document in (
                patient_document(instance, [instance.px_value("StudyInstanceUID")]),
                study_meta_document(instance),
                study_series_document(instance, str(series_dir)),
                series_meta_document(instance),
                image_document(instance, destination, source.stat),
            ):
                json_bytes(document)

    def _target(self, instance: Instance) -> tuple[Path, Path, tuple[MissingElement, ...]]:
        """Where ``instance`` goes: its series folder, its file, what the templates missed."""
        relative, missing = plan_placement(instance, self.layout)
        if self.by_sender is not None:
            relative = sender_folder(instance, self.by_sender) / relative
        series_dir = self._series_dir(relative)
        return series_dir, series_dir / relative.name, missing

    def _write_logs(
        self, instance: Instance, series_dir: Path, destination: Path, stat: os.stat_result
    ) -> None:
        assert self.logdir is not None  # noqa: S101 - checked by the caller
        paths = self._paths_of(instance, self.logdir)
        store = self._store
        # Published from the bottom up (image, series, study, patient), so that a
        # reader that finds a file also finds every file it leads to: pypx's
        # readers list a study's series folder as soon as the study meta exists.
        nlink = None
        if self.move and instance.stat is not None and stat.st_ino == instance.stat.st_ino:
            # The data file is a hard link to the source, which goes next: record
            # the link count the file will have, as a copy would.
            nlink = max(1, stat.st_nlink - 1)
        image = image_document(instance, destination, stat, nlink=nlink)
        # The -img folder holds one file per instance and nothing else (pypx
        # counts them), so its temporary files live one level up.
        store.write_atomic(
            paths.image(destination.name),
            json_bytes(image),
            temp_dir=paths.series_data,
            folder=paths.images,
        )
        if paths.study_series not in self._written:
            store.create_once(paths.series_meta, json_bytes(series_meta_document(instance)))
            store.create_once(paths.pack, _SERIES_PACK)
            store.create_once(
                paths.study_series, json_bytes(study_series_document(instance, str(series_dir)))
            )
            self._written.put(paths.study_series, True)
        if paths.study_meta not in self._written:
            store.create_once(paths.study_meta, json_bytes(study_meta_document(instance)))
            self._written.put(paths.study_meta, True)
        self._record_study(instance, paths)

    def _record_study(self, instance: Instance, paths: LogPaths) -> None:
        study_uid = instance.px_value("StudyInstanceUID")
        key = (paths.patient, study_uid)
        if key in self._written:
            return

        def add_study(current: dict[str, Any] | None) -> dict[str, Any] | None:
            patient_id = instance.px_value("PatientID")
            record = (current or {}).get(patient_id)
            if not isinstance(record, dict) or not isinstance(record.get("StudyList"), list):
                return patient_document(instance, [study_uid])
            if study_uid in record["StudyList"]:
                return None
            record["StudyList"].append(study_uid)
            assert current is not None  # noqa: S101 - record came from it
            return current

        self._store.update_json(paths.patient, add_study)
        self._written.put(key, True)


def repack_file(
    src: str | os.PathLike[str],
    *,
    datadir: str | os.PathLike[str],
    logdir: str | os.PathLike[str] | None = None,
    layout: Layout | None = None,
    move: bool = False,
) -> Repacked:
    """Repack one file (a convenience over :class:`Repacker` for one-off use)."""
    return Repacker(datadir, logdir, layout, move=move).repack(src)
