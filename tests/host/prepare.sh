#!/usr/bin/env bash
# Installs what the pack's ComfyUI side needs into the active Python environment (README, "Run it"):
#  - the requirements of the ComfyUI at $COMFYUI_PATH, or of the ComfyUI whose custom_nodes folder
#    holds the pack, as they are (without torch, torchvision and torchaudio: requirements.txt has torch);
#  - each archive ComfyUI-v*.tar.gz in ../shared/comfyui/ (or $COMFYUI_ARCHIVES) unpacked once into
#    .hosts/, for the host tests: the packages its requirements.txt pins to one version (frontend,
#    workflow templates, embedded docs) go into .hosts/extras-<version>/, which that release's test
#    run puts first on PYTHONPATH, so releases that pin different versions share one environment;
#    its other requirements into the environment.
# With neither there is nothing to do: the host tests skip, saying why.
set -euo pipefail
cd "$(dirname "$0")/../.."

archives_dir="${COMFYUI_ARCHIVES:-../shared/comfyui}"
hosts=.hosts
shopt -s nullglob
archives=("$archives_dir"/ComfyUI-v*.tar.gz)
shopt -u nullglob
mkdir -p "$hosts"

comfyui="${COMFYUI_PATH:-}"
if [ -z "$comfyui" ] && [ "$(basename "$(dirname "$PWD")")" = custom_nodes ] && [ -f ../../main.py ]; then
    comfyui=../..
fi
install_pins() {  # the packages release $1 (folder $2) pins, into $hosts/extras-$1, whole or not at all
    local version=$1 name=$2
    rm -rf "$hosts/extras-$version.partial"
    { grep -E '^[A-Za-z0-9_.-]+==' "$hosts/$name/requirements.txt" || true; } > "$hosts/pins-$version.txt"
    mkdir "$hosts/extras-$version.partial"
    if [ -s "$hosts/pins-$version.txt" ]; then
        python -m pip install -q --target "$hosts/extras-$version.partial" -r "$hosts/pins-$version.txt"
    fi
    mv "$hosts/extras-$version.partial" "$hosts/extras-$version"
}

installs=()
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
        install_pins "$version" "$name" &  # side by side with the other releases' and the requirements below
        installs+=($!)
    fi
done
if [ -z "$comfyui" ] && [ ${#archives[@]} -eq 0 ]; then
    echo "no ComfyUI: no COMFYUI_PATH, no ComfyUI around the pack, no archives in $archives_dir"
    exit 0
fi
# That ComfyUI's requirements as they are; the archives' without their exact pins (in extras-*).
{
    if [ -n "$comfyui" ]; then cat "$comfyui/requirements.txt"; echo; fi
    for archive in "${archives[@]}"; do
        grep -vE '^[A-Za-z0-9_.-]+==' "$hosts/$(basename "$archive" .tar.gz)/requirements.txt" || true; echo
    done
} | sed -e 's/#.*//' -e 's/[[:space:]]*$//' | grep -vE '^(torch|torchvision|torchaudio)?$' | sort -u \
    > "$hosts/requirements.txt"
echo "installing the ComfyUI requirements ($hosts/requirements.txt)"
python -m pip install -q -r "$hosts/requirements.txt"
for pid in "${installs[@]}"; do
    wait "$pid" || { echo "installing a release's pinned packages failed (see above)" >&2; exit 1; }
done
