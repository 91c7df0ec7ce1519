#!/usr/bin/env bash
# Put the SAG-anon example set (192 anonymised MR instances, one series) and a
# reference px-repack run of it into DIR (default: ./examples):
#
#   DIR/FNNDSC-SAG-anon-3d6e850/          the instances, read-only
#   DIR/pypx/                             a venv with pypx==3.10.16 and pydicom<3
#   DIR/px-repack-output/{data,log}       what the real px-repack makes of them
#   DIR/px-repack-corpus/files/           pydicom 2.4's own test files (read-only)
#   DIR/px-repack-corpus/runs/FILE/{data,log}
#                                         the real px-repack's output for each of them
#   DIR/pypx-3.12/, DIR/px-repack-corpus/runs-3.12/
#                                         the same with pypx==3.12.6
#   DIR/px-repack-corpus/files/pydicom-3/ pydicom 3's test files with repeating groups
#                                         (overlays 60xx, curves 50xx), run by both
#
#   ./get_examples.sh [DIR] [--instances-only]
#
# The instances come from ../shared/examples when that folder exists beside
# this checkout, else from the FNNDSC/SAG-anon repository on GitHub.
# --instances-only stops after the instances (no px-repack reference).
#
# Every step builds in a fresh temporary folder, checks its result, and only
# then moves it into place, so a failed or interrupted run leaves nothing
# half-done behind, and the next run starts that step again. A step whose
# result is already there is skipped, so running it twice is cheap.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
name="FNNDSC-SAG-anon-3d6e850"
commit="3d6e850"
expected=192
python="${PYTHON:-python3}"
dir="$here/examples"
instances_only=0
for argument in "$@"; do
    case "$argument" in
        --instances-only) instances_only=1 ;;
        -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "get_examples: unknown option $argument (see --help)" >&2; exit 2 ;;
        *) dir="$argument" ;;
    esac
done
shared="$here/../shared/examples/$name"

fail() {  # one line saying what went wrong, one saying what to do
    echo "get_examples: error: $1" >&2
    echo "get_examples: hint: $2" >&2
    exit 1
}

mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
cd "$dir"
rm -rf ./.get-examples-*  # what an interrupted run left behind

count_instances() {  # instances directly in folder $1 (no deeper)
    find "$1" -mindepth 1 -maxdepth 1 -type f -name '*.dcm' | wc -l
}

if [ ! -d "$name" ] || [ "$(count_instances "$name")" -ne "$expected" ]; then
    work="$(mktemp -d "$dir/.get-examples-XXXXXX")"
    if [ -d "$shared" ]; then
        echo "get_examples: copying $name from $shared"
        cp -R "$shared/." "$work/"
    else
        echo "get_examples: downloading $name from github.com/FNNDSC/SAG-anon"
        if ! curl -fsSL --connect-timeout 20 --max-time 600 \
                "https://github.com/FNNDSC/SAG-anon/tarball/$commit" -o "$work/set.tar.gz" 2>/dev/null \
            || ! tar -xzf "$work/set.tar.gz" -C "$work" --strip-components=1 2>/dev/null; then
            rm -rf "$work"
            fail "cannot download the example set from github.com/FNNDSC/SAG-anon (offline?)" \
                 "put its $expected .dcm files (commit $commit) in $dir/$name/ by hand, or in ../shared/examples/$name/ beside this checkout, then run me again"
        fi
        rm -f "$work/set.tar.gz"
        # The repository may keep the files one level down: bring them up.
        if [ "$(count_instances "$work")" -eq 0 ]; then
            find "$work" -mindepth 2 -type f -name '*.dcm' -exec mv -t "$work" {} +
        fi
    fi
    found="$(count_instances "$work")"
    if [ "$found" -ne "$expected" ]; then
        rm -rf "$work"
        fail "expected $expected instances, found $found in what was fetched" \
             "put the $expected .dcm files of FNNDSC/SAG-anon (commit $commit) in $dir/$name/ by hand"
    fi
    chmod -R a-w "$work"/*.dcm
    rm -rf "$name"
    mv "$work" "$name"
fi
echo "get_examples: $expected instances in $dir/$name"
[ "$instances_only" -eq 1 ] && exit 0

px_over_corpus() {  # $1: a px-repack, $2: the corpus files, $3: a new folder for its runs
    # One px-repack per file (about a second each, mostly its start), on every core.
    # px stores the data dir as typed: relative, as the parity tests expect. A file
    # px cannot repack is part of the reference, so its failure is not ours.
    mkdir -p "$3"
    (cd "$2" && find . -type f -printf '%P\0' | sort -z) \
        | PX="$1" FILES="$2" RUNS="$3" xargs -0 -r -P "$(nproc 2>/dev/null || echo 2)" -I '{}' \
          bash -c 'run="$RUNS/$1"; mkdir -p "$run" && cd "$run" || exit 0
            timeout 120 "$PX" --xcrdir "$FILES/$(dirname "$1")" --xcrfile "$(basename "$1")" \
                --datadir data --logdir log --verbosity 0 >/dev/null 2>&1 || true' _ '{}'
}

install_pypx() {  # $1: a venv folder, $2: the pypx version
    if [ ! -x "$1/bin/px-repack" ] || ! "$1/bin/python" -c 'import pypx, pydicom' 2>/dev/null; then
        echo "get_examples: installing pypx==$2 (with pydicom<3: pypx packs nothing with pydicom 3)"
        # A venv only works where it was made: built in place, from scratch, and
        # removed again unless pypx imports from it.
        rm -rf "$1"
        if ! "$python" -m venv "$1" \
            || ! "$1/bin/pip" install --quiet --disable-pip-version-check "pypx==$2" 'pydicom<3' \
            || ! "$1/bin/python" -c 'import pypx, pydicom' 2>/dev/null; then
            rm -rf "$1"
            fail "cannot install pypx==$2 from PyPI" \
                 "check that $python has venv (apt-get install python3-venv) and that PyPI is reachable"
        fi
    fi
}

install_pypx pypx 3.10.16

if [ ! -f px-repack-output/.complete ]; then
    echo "get_examples: running the real px-repack into $dir/px-repack-output"
    work="$(mktemp -d "$dir/.get-examples-XXXXXX")"
    # px-repack stores the data dir as typed: relative, as the parity tests expect.
    mkdir "$work/px-repack-output"
    (cd "$work" && "$dir/pypx/bin/px-repack" --xcrdir "$dir/$name" --parseAllFilesWithSubStr , \
        --datadir px-repack-output/data --logdir px-repack-output/log --verbosity 0)
    packed="$(find "$work/px-repack-output/data" -type f -name '*.dcm' 2>/dev/null | wc -l)"
    if [ "$packed" -ne "$expected" ]; then
        rm -rf "$work"
        fail "px-repack packed $packed of $expected instances" \
             "remove $dir/pypx and run me again (pypx needs pydicom<3)"
    fi
    rm -rf px-repack-output
    mv "$work/px-repack-output" px-repack-output
    touch px-repack-output/.complete
    rm -rf "$work"
fi
if [ ! -f px-repack-corpus/.complete ]; then
    # Files nobody here wrote: pydicom's own test corpus (every regular file of its
    # test_files and charset_files, not only *.dcm), each repacked by the real px-repack
    # into a tree of its own, so that each file's output can be compared alone.
    echo "get_examples: running the real px-repack over pydicom's test files into $dir/px-repack-corpus"
    work="$(mktemp -d "$dir/.get-examples-XXXXXX")"
    data_dir="$(pypx/bin/python -c 'import os, pydicom.data; print(os.path.dirname(pydicom.data.__file__))')"
    mkdir -p "$work/px-repack-corpus/files" "$work/px-repack-corpus/runs"
    (cd "$data_dir" && find test_files charset_files -type f ! -name '*.py' ! -name '*.pyc' \
        -exec cp --parents -t "$work/px-repack-corpus/files" {} +)
    chmod -R a-w "$work/px-repack-corpus/files"
    px_over_corpus "$dir/pypx/bin/px-repack" "$work/px-repack-corpus/files" \
        "$work/px-repack-corpus/runs"
    total="$(find "$work/px-repack-corpus/files" -type f | wc -l)"
    if [ "$total" -lt 90 ]; then
        rm -rf "$work"
        fail "found only $total files in pydicom's test corpus at $data_dir" \
             "remove $dir/pypx and run me again"
    fi
    # The runs were made where they now lie no more: they name their folder "data" relative.
    rm -rf px-repack-corpus
    mv "$work/px-repack-corpus" px-repack-corpus
    touch px-repack-corpus/.complete
    rm -rf "$work"
    echo "get_examples: px-repack ran over $total files of pydicom's test corpus"
fi

# The px-repack-3.12 layout's reference: the same corpus through pypx 3.12.6.
install_pypx pypx-3.12 3.12.6
if [ ! -f px-repack-corpus/.complete-3.12 ]; then
    echo "get_examples: running px-repack 3.12.6 over the same files into px-repack-corpus/runs-3.12"
    work="$(mktemp -d "$dir/.get-examples-XXXXXX")"
    px_over_corpus "$dir/pypx-3.12/bin/px-repack" "$dir/px-repack-corpus/files" "$work/runs-3.12"
    rm -rf px-repack-corpus/runs-3.12
    mv "$work/runs-3.12" px-repack-corpus/runs-3.12
    touch px-repack-corpus/.complete-3.12
    rm -rf "$work"
fi

# Repeating groups (overlays 60xx, curves 50xx): pydicom 2.4's corpus has none, so the
# files of pydicom 3's corpus that carry one join it, run by both px-repacks.
if [ ! -f px-repack-corpus/.complete-pydicom-3 ]; then
    echo "get_examples: adding pydicom 3's test files with repeating groups to the corpus"
    work="$(mktemp -d "$dir/.get-examples-XXXXXX")"
    if ! pypx/bin/pip download --quiet --disable-pip-version-check --no-deps --only-binary :all: \
            -d "$work/wheel" 'pydicom>=3,<4'; then
        rm -rf "$work"
        fail "cannot download pydicom 3 from PyPI" "check that PyPI is reachable"
    fi
    mkdir "$work/files"
    # Chosen by what they hold, read with px's own pydicom 2.4.
    pypx/bin/python - "$work"/wheel/pydicom-*.whl "$work/files" <<'PYTHON'
import io, pathlib, sys, warnings, zipfile

import pydicom

warnings.simplefilter("ignore")
wheel, out = sys.argv[1], pathlib.Path(sys.argv[2])
with zipfile.ZipFile(wheel) as archive:
    for name in archive.namelist():
        if not name.startswith("pydicom/data/test_files/") or name.endswith((".py", ".pyc")):
            continue
        data = archive.read(name)
        try:
            dataset = pydicom.dcmread(io.BytesIO(data), force=True)
            groups = {tag.group & 0xFF00 for tag in dataset.keys()}
        except Exception:
            continue
        if groups & {0x5000, 0x6000}:
            (out / pathlib.PurePosixPath(name).name).write_bytes(data)
PYTHON
    found="$(find "$work/files" -type f | wc -l)"
    if [ "$found" -eq 0 ]; then
        rm -rf "$work"
        fail "pydicom 3's test files hold no repeating group" "report this: the corpus changed"
    fi
    chmod -R a-w "$work/files"  # as the rest of the corpus, before px copies them
    px_over_corpus "$dir/pypx/bin/px-repack" "$work/files" "$work/runs"
    px_over_corpus "$dir/pypx-3.12/bin/px-repack" "$work/files" "$work/runs-3.12"
    chmod u+w px-repack-corpus/files
    rm -rf px-repack-corpus/files/pydicom-3 px-repack-corpus/runs/pydicom-3 \
        px-repack-corpus/runs-3.12/pydicom-3
    mv "$work/files" px-repack-corpus/files/pydicom-3
    chmod a-w px-repack-corpus/files
    mv "$work/runs" px-repack-corpus/runs/pydicom-3
    mv "$work/runs-3.12" px-repack-corpus/runs-3.12/pydicom-3
    touch px-repack-corpus/.complete-pydicom-3
    rm -rf "$work"
    echo "get_examples: $found file(s) with repeating groups added to the corpus"
fi
echo "get_examples: ready in $dir"
