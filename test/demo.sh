#!/usr/bin/env bash
# make demo: coffer on its embedded defaults — a private SoftHSM2 token and a local-folder
# remote, all under .demo/ in the checkout. Safe to run again: it starts from scratch.
set -euo pipefail
cd "$(dirname "$0")/.."
demo=$PWD/.demo
bin=$PWD/bin/coffer
rm -rf "$demo"
mkdir -p "$demo/tokens" && chmod 700 "$demo" "$demo/tokens"

# A private SoftHSM2 token store, so the demo never touches a system token.
cat >"$demo/softhsm2.conf" <<CONF
directories.tokendir = $demo/tokens
objectstore.backend = file
log.level = ERROR
CONF
export SOFTHSM2_CONF=$demo/softhsm2.conf
pin=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
softhsm2-util --init-token --free --label coffer-demo --pin "$pin" --so-pin "$pin$pin" >/dev/null
printf '%s\n' "$pin" >"$demo/pin" && chmod 600 "$demo/pin"

echo "== coffer init (SoftHSM2 token 'coffer-demo', local-folder remote $demo/remote)"
"$bin" init --state "$demo/state" --remote "$demo/remote" \
	--hsm-module /usr/lib/softhsm/libsofthsm2.so --hsm-token coffer-demo --hsm-pin-file "$demo/pin"

mnt=$demo/mnt
mkdir -p "$mnt"
echo
echo "== coffer mount --state $demo/state $mnt"
"$bin" mount --state "$demo/state" --hsm-pin-file "$demo/pin" "$mnt"

echo
echo "== a legacy program writes and reads plain files"
marker="coffer demo $(date +%s%N)"
mkdir -p "$mnt/reports/2026"
printf '%s\n' "$marker" >"$mnt/reports/2026/quarterly-results.txt"
cp /etc/services "$mnt/services"
ls -lR "$mnt"
cat "$mnt/reports/2026/quarterly-results.txt"
cmp /etc/services "$mnt/services" && echo "services: identical through the mount"
sync "$mnt/services"

echo
echo "== coffer status $mnt"
"$bin" status "$mnt"

echo
echo "== coffer lock $mnt: every key wiped from memory; contents unreadable until unlock"
"$bin" lock "$mnt"
if cat "$mnt/reports/2026/quarterly-results.txt" 2>"$demo/locked.err"; then
	echo "FAIL: a locked mount served file contents" >&2
	exit 1
fi
echo "cat while locked: $(cat "$demo/locked.err")"
"$bin" unlock --hsm-pin-file "$demo/pin" "$mnt"
cat "$mnt/reports/2026/quarterly-results.txt"

echo
echo "== coffer rotate --state $demo/state: a new master key version in the HSM, no file re-encrypted"
"$bin" rotate --state "$demo/state" --retire-old
cmp /etc/services "$mnt/services" && echo "services: still identical after the rotation"

echo
echo "== what the remote holds: opaque objects under random ids"
"$bin" unmount "$mnt"
find "$demo/remote" -type f | sed "s|$demo/||" | sort
if grep -rqF "$marker" "$demo/remote" "$demo/state"; then
	echo "FAIL: plaintext found on the remote or in the state folder" >&2
	exit 1
fi
if find "$demo/remote" | grep -q -e quarterly -e reports -e services; then
	echo "FAIL: a file name reached the remote" >&2
	exit 1
fi
echo "no plaintext and no file name on the remote or in the state folder"

echo
echo "== coffer audit --state $demo/state"
"$bin" audit --state "$demo/state"

echo
echo "Done. Remount with: SOFTHSM2_CONF=$demo/softhsm2.conf $bin mount --state $demo/state --hsm-pin-file $demo/pin $mnt"
