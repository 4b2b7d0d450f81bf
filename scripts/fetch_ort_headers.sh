#!/usr/bin/env bash
# ONNX Runtime's C/C++ headers are in no wheel. On Debian / Ubuntu with apt, take them from Debian
# trixie's libonnxruntime-dev (1.21; a custom-op library built against them loads in newer runtimes:
# the C API is versioned) without installing anything system-wide. Prints the include folder.
#   scripts/fetch_ort_headers.sh DEST
set -euo pipefail
dest=$(mkdir -p "${1:?usage: fetch_ort_headers.sh DEST}" && cd "$1" && pwd)
if [ -f "$dest/usr/include/onnxruntime/onnxruntime_cxx_api.h" ]; then echo "$dest/usr/include/onnxruntime"; exit 0; fi
command -v apt-get >/dev/null || { echo "fetch_ort_headers: no apt-get; set ONNXRUNTIME_INCLUDE_DIR to a folder with onnxruntime_cxx_api.h (e.g. from an onnxruntime release archive)" >&2; exit 1; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/parts" "$work/cache"
cat > "$work/parts/trixie.sources" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
opts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$work/parts" -o "Dir::State::Lists=$work/lists"
      -o "Dir::Cache=$work/cache" -o Debug::NoLocking=1)
apt-get "${opts[@]}" -qq update >&2
(cd "$work" && apt-get "${opts[@]}" -qq download libonnxruntime-dev >&2 2>/dev/null)
dpkg -x "$work"/libonnxruntime-dev_*.deb "$dest"
echo "$dest/usr/include/onnxruntime"
