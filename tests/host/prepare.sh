#!/usr/bin/env bash
# Prepares the ComfyUI releases the host tests run on (README "Run it", command 2), into the
# active Python environment:
#  - each archive ComfyUI-v*.tar.gz in ../shared/comfyui/ (or $COMFYUI_ARCHIVES) is unpacked once
#    into .hosts/; the packages its requirements.txt pins to one version (frontend, workflow
#    templates, embedded docs) go into .hosts/extras-<version>/, which that release's test run puts
#    first on PYTHONPATH, so releases that pin different versions share one environment;
#  - the other requirements of those releases and of $COMFYUI_PATH (without torch, torchvision and
#    torchaudio: requirements.txt has torch) are installed into the environment.
# Without archives and without COMFYUI_PATH there is nothing to prepare: the host tests skip, saying why.
set -euo pipefail
cd "$(dirname "$0")/../.."

archives_dir="${COMFYUI_ARCHIVES:-../shared/comfyui}"
hosts=.hosts
shopt -s nullglob
archives=("$archives_dir"/ComfyUI-v*.tar.gz)
shopt -u nullglob
mkdir -p "$hosts"

requirements=()
if [ -n "${COMFYUI_PATH:-}" ]; then
    requirements+=("$COMFYUI_PATH/requirements.txt")
fi
for archive in "${archives[@]}"; do
    name=$(basename "$archive" .tar.gz)  # ComfyUI-vX.Y.Z
    version=${name#ComfyUI-v}
    if [ ! -f "$hosts/$name/main.py" ]; then
        echo "unpacking $archive into $hosts/$name"
        rm -rf "$hosts/$name" "$hosts/$name.partial"
        mkdir "$hosts/$name.partial"
        tar xzf "$archive" -C "$hosts/$name.partial"
        mv "$hosts/$name.partial/$name" "$hosts/$name"
        rmdir "$hosts/$name.partial"
    fi
    if [ ! -d "$hosts/extras-$version" ]; then
        echo "installing the packages ComfyUI $version pins into $hosts/extras-$version"
        rm -rf "$hosts/extras-$version.partial"
        { grep -E '^[A-Za-z0-9_.-]+==' "$hosts/$name/requirements.txt" || true; } > "$hosts/pins-$version.txt"
        mkdir "$hosts/extras-$version.partial"
        if [ -s "$hosts/pins-$version.txt" ]; then
            python -m pip install -q --target "$hosts/extras-$version.partial" -r "$hosts/pins-$version.txt"
        fi
        mv "$hosts/extras-$version.partial" "$hosts/extras-$version"
    fi
    requirements+=("$hosts/$name/requirements.txt")
done

if [ ${#requirements[@]} -eq 0 ]; then
    echo "no ComfyUI: neither COMFYUI_PATH nor archives in $archives_dir; the host tests will skip"
    exit 0
fi
# COMFYUI_PATH's requirements as they are; the archives' without their exact pins (in extras-*).
{
    if [ -n "${COMFYUI_PATH:-}" ]; then cat "$COMFYUI_PATH/requirements.txt"; echo; fi
    for archive in "${archives[@]}"; do
        grep -vE '^[A-Za-z0-9_.-]+==' "$hosts/$(basename "$archive" .tar.gz)/requirements.txt" || true; echo
    done
} | sed -e 's/#.*//' -e 's/[[:space:]]*$//' | grep -vE '^(torch|torchvision|torchaudio)?$' | sort -u \
    > "$hosts/requirements.txt"
echo "installing the ComfyUI requirements ($hosts/requirements.txt)"
python -m pip install -q -r "$hosts/requirements.txt"
