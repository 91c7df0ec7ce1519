#!/usr/bin/env bash
# Put the SAG-anon example set (192 anonymised MR instances, one series) and a
# reference px-repack run of it into DIR (default: ./examples):
#
#   DIR/FNNDSC-SAG-anon-3d6e850/          the instances, read-only
#   DIR/pypx/                             a venv with pypx==3.10.16 and pydicom<3
#   DIR/px-repack-output/{data,log}       what the real px-repack makes of them
#
# The instances come from ../shared/examples when that folder exists beside
# this checkout, else from the FNNDSC/SAG-anon repository on GitHub. Every step
# is skipped when its result is already there, so running it twice is cheap.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="${1:-$here/examples}"
name="FNNDSC-SAG-anon-3d6e850"
shared="$here/../shared/examples/$name"
python="${PYTHON:-python3}"

mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
cd "$dir"

if [ ! -d "$name" ]; then
    if [ -d "$shared" ]; then
        echo "get_examples: copying $name from $shared"
        cp -R "$shared" "$name.partial"
    else
        echo "get_examples: downloading $name from github.com/FNNDSC/SAG-anon"
        mkdir -p "$name.partial"
        curl -fsSL "https://github.com/FNNDSC/SAG-anon/tarball/3d6e850" \
            | tar -xz -C "$name.partial" --strip-components=1
    fi
    chmod -R a-w "$name.partial"/*
    mv "$name.partial" "$name"
fi
count="$(find "$name" -type f -name '*.dcm' | wc -l)"
if [ "$count" -ne 192 ]; then
    echo "get_examples: expected 192 instances in $dir/$name, found $count" >&2
    exit 1
fi

if [ ! -x pypx/bin/px-repack ]; then
    echo "get_examples: installing pypx==3.10.16 (with pydicom<3: pypx packs nothing with pydicom 3)"
    "$python" -m venv pypx
    pypx/bin/pip install --quiet --disable-pip-version-check 'pypx==3.10.16' 'pydicom<3'
fi

if [ ! -f px-repack-output/.complete ]; then
    echo "get_examples: running the real px-repack into $dir/px-repack-output"
    rm -rf px-repack-output
    pypx/bin/px-repack --xcrdir "./$name" --parseAllFilesWithSubStr , \
        --datadir px-repack-output/data --logdir px-repack-output/log \
        --verbosity 0
    touch px-repack-output/.complete
fi
echo "get_examples: ready in $dir"
