"""pypx's own readers (px-status's calls into ``pypx.smdb``), in a loop over a log tree.

Run by the pypx 3.10.16 venv that ``get_examples.sh`` makes (pydicom 2.4), not
by the test suite's interpreter::

    examples/pypx/bin/python tests/pypx_reader.py LOGDIR STOPFILE

Until STOPFILE exists, it reads what px-status reads: each patient's
``StudyList``, each study's series list, and each series' status and
counts. It prints one JSON line: how many reads, how many raised, the
first errors, and how many times a file named a study or series whose own
files were not there (a reader must never find a parent whose children are
missing).
"""

import glob
import json
import os
import sys
import traceback
from argparse import Namespace

from pypx import smdb


def main() -> None:
    logdir, stopfile = sys.argv[1], sys.argv[2]
    db = smdb.SMDB(Namespace(str_logDir=logdir))
    reads, errors, dangling = 0, [], []
    complete = set()  # studies found whole: they only grow, so each is read until then
    while not os.path.exists(stopfile):
        for patient_file in glob.glob(os.path.join(logdir, "patientData", "*.json")):
            reads += 1
            try:
                with open(patient_file) as handle:
                    patients = json.load(handle)
                for record in patients.values():
                    for study in set(record["StudyList"]) - complete:
                        if check_study(db, study, dangling):
                            complete.add(study)
            except Exception:  # what px-status would die of
                errors.append(traceback.format_exc(limit=2))
        for study_meta in glob.glob(os.path.join(logdir, "studyData", "*-meta.json")):
            study = os.path.basename(study_meta)[: -len("-meta.json")]
            if study in complete:
                continue
            reads += 1
            try:
                db.study_seriesListGet(study)
            except Exception:
                errors.append(traceback.format_exc(limit=2))
    print(
        json.dumps(
            {
                "reads": reads,
                "errors": len(errors),
                "first_errors": errors[:3],
                "dangling": len(dangling),
                "first_dangling": dangling[:3],
            }
        )
    )


def check_study(db, study, dangling):
    """Read a study listed by its patient as px-status does; whether it was whole."""
    status = db.study_seriesContainsVerify(study, "-", False)
    whole = status["study"]["seriesListInStudy"]["status"]
    if not whole:
        dangling.append(f"the patient lists {study}: no series yet")
    for series in status["study"]["seriesListInStudy"]["seriesList"]:
        if not db.series_statusGet(series)["status"]:
            dangling.append(f"{study} lists {series}: no series meta")
            whole = False
        if db.series_receivedAndRequested(series)["received"]["count"] < 1:
            dangling.append(f"{study} lists {series}: no image file")
            whole = False
    return whole


if __name__ == "__main__":
    main()
