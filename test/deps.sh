#!/usr/bin/env bash
# Installs what coffer's build, tests and demo need on a fresh Debian 12 machine, as root,
# without prompting. Does nothing when everything is already there.
set -euo pipefail

pkgs=(fuse3 softhsm2 opensc openssh-server python3 python3-cryptography python3-argon2 gcc libc6-dev make git)
[ "${COFFER_BENCH:-}" = 1 ] && pkgs+=(gocryptfs)

missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "coffer: missing Debian packages: ${missing[*]} (run as root, or apt-get install them)" >&2
		exit 1
	fi
	echo "coffer: installing ${missing[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v go >/dev/null || { echo "coffer: Go 1.26 is required (not found on PATH)" >&2; exit 1; }
