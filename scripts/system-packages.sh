#!/usr/bin/env bash
# The Debian/Ubuntu packages the test suite needs beyond Python (the AVR firmware's toolchain and
# the simavr simulator it runs in). Installs what is missing when run as root or with
# password-less sudo; otherwise stops and prints the one command to run. `make test` calls it.
set -euo pipefail

PACKAGES=(gcc-avr avr-libc binutils-avr simavr libsimavr-dev libsimavrparts1 libelf-dev
          pkg-config gcc make)

if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "system-packages: no dpkg here; install the equivalents of: ${PACKAGES[*]}" >&2
    exit 1
fi
missing=()
for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
else
    echo "The tests need these Debian packages; install them once with:" >&2
    echo "    sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi
echo "system-packages: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# A fresh machine may have no package lists yet: update only when the install cannot proceed.
"${sudo[@]}" apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
    || { "${sudo[@]}" apt-get update -q >/dev/null && "${sudo[@]}" apt-get install -y -q "${missing[@]}" >/dev/null; }
