#!/usr/bin/env bash
# The README's first command as a newcomer meets it: run by a user without privileges, on a
# fresh clone, with no Rust toolchain but the system-wide one (Debian's cargo-web, installed
# here when missing, as ./run does for root). Passes when it prints RTD lines and the RTS
# summary (issue 11). Needs root: it makes (and afterwards deletes) the user.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "newcomer.sh needs root (it makes a throwaway user)" >&2
    exit 1
fi

# The first command of the README's first sh block, comment stripped: what a newcomer runs.
first="$(sed -n '/^```sh$/,/^```$/p' README.md | sed -n 2p | sed 's/#.*//; s/[[:space:]]*$//')"
[ -n "$first" ] || { echo "newcomer.sh: no command found in the README" >&2; exit 1; }

if [ ! -x /usr/bin/cargo ] || [ ! -x /usr/bin/rustc ]; then
    echo "installing Debian's system-wide Rust toolchain (cargo-web, rustc-web)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cargo-web rustc-web >/dev/null
fi

user=evlnet-newcomer
made_user=0
if ! id "$user" >/dev/null 2>&1; then
    useradd --create-home --shell /bin/bash "$user"
    made_user=1
fi
work="$(mktemp -d /tmp/evlnet-newcomer.XXXXXX)"
log="$work/out.log"
cleanup() {
    rm -rf "$work"
    if [ "$made_user" = 1 ]; then userdel --remove "$user" 2>/dev/null || true; fi
}
trap cleanup EXIT

git clone -q "$PWD" "$work/evlnet"
chown -R "$user:" "$work"
chmod 755 "$work"
start=$(date +%s)
# A login shell: the user's own PATH and HOME, nothing of root's (root's rustup is unreadable).
if ! timeout 900 su --login "$user" --shell /bin/bash \
        --command "cd '$work/evlnet' && $first" >"$log" 2>&1 </dev/null; then
    tail -40 "$log" >&2
    echo "newcomer.sh: '$first' failed as $user" >&2
    exit 1
fi
rtd=$(grep -c '^RTD|' "$log" || true)
if [ "$rtd" -lt 1 ] || ! grep -q '^RTS|' "$log"; then
    tail -40 "$log" >&2
    echo "newcomer.sh: '$first' printed $rtd RTD lines and no RTS summary" >&2
    exit 1
fi
echo "newcomer: '$first' as $user on a fresh clone: $rtd RTD lines and the RTS summary," \
     "$(($(date +%s) - start)) s with the first build ($(/usr/bin/cargo --version))"
