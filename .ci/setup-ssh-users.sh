#!/bin/sh
# Prepare a machine (CI runner or developer box, as root) for pgdeploy's SSH integration tests.
# Idempotent: safe to run again.
#
#   pgdtest    non-root user with passwordless sudo
#   pgdtestpw  non-root user whose sudo asks for a password
#
# The password of pgdtestpw is generated once and kept in
#   /var/lib/pgdeploy-test/pgdtestpw.password   (mode 0600, root)
# Tests read that file, or the environment variable PGDEPLOY_TEST_SUDO_PASSWORD if it is set
# (set it to the same value if you run the script with PGDEPLOY_TEST_SUDO_PASSWORD exported:
# the script then uses that value as the password).
set -eu

if [ "$(id -u)" -ne 0 ]; then
    echo "setup-ssh-users.sh must run as root" >&2
    exit 1
fi

missing=""
command -v sudo >/dev/null 2>&1 || missing="$missing sudo"
[ -x /usr/sbin/sshd ] || missing="$missing openssh-server"
command -v ssh-keygen >/dev/null 2>&1 || missing="$missing openssh-client"
if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    # shellcheck disable=SC2086
    apt-get install -y --no-install-recommends $missing
fi
mkdir -p /run/sshd

state=/var/lib/pgdeploy-test
install -d -m 0700 "$state"
pwfile="$state/pgdtestpw.password"
if [ -n "${PGDEPLOY_TEST_SUDO_PASSWORD:-}" ]; then
    printf '%s\n' "$PGDEPLOY_TEST_SUDO_PASSWORD" >"$pwfile"
elif [ ! -s "$pwfile" ]; then
    # 24 random alphanumeric characters
    tr -dc 'A-Za-z0-9' </dev/urandom | head -c 24 >"$pwfile"
    echo >>"$pwfile"
fi
chmod 0600 "$pwfile"
password=$(head -n 1 "$pwfile")

for u in pgdtest pgdtestpw; do
    if ! id "$u" >/dev/null 2>&1; then
        useradd --create-home --shell /bin/sh "$u"
    fi
done

# pgdtest: no password at all, but not "locked" (sshd refuses locked accounts without PAM).
usermod -p '*' pgdtest
# pgdtestpw: a real password, needed by sudo.
printf 'pgdtestpw:%s\n' "$password" | chpasswd

printf 'pgdtest ALL=(ALL:ALL) NOPASSWD: ALL\n' >/etc/sudoers.d/pgdtest
printf 'pgdtestpw ALL=(ALL:ALL) ALL\n' >/etc/sudoers.d/pgdtestpw
chmod 0440 /etc/sudoers.d/pgdtest /etc/sudoers.d/pgdtestpw
visudo -c -q

echo "pgdeploy SSH test users ready (password of pgdtestpw in $pwfile)"
