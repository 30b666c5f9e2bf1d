#!/bin/sh
# Install the host packages the QEMU test bed (tests/vm) needs on Debian 12.
# Idempotent: does nothing when everything is already installed.
# Must run as root. Waits for the dpkg/apt locks instead of failing when
# another apt process is running.
set -eu

PACKAGES="qemu-system-x86 busybox-static cpio gzip kexec-tools makedumpfile
binutils gcc dpkg-dev ca-certificates python3-venv strace ovmf
mmdebstrap e2fsprogs openssh-server libsnappy1v5"

if [ "$(id -u)" != 0 ]; then
    echo "install-deps.sh: must run as root" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Wait up to 15 minutes for locks held by a concurrent apt/dpkg.
APT_OPTS="-o DPkg::Lock::Timeout=900 -o Acquire::Retries=3"

missing=""
for p in $PACKAGES; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    case "$status" in
        *"install ok installed"*) ;;
        *) missing="$missing $p" ;;
    esac
done

# The test bed also runs `apt-get download` for kernels and guest packages:
# it needs package lists, so refresh them when they are missing or stale (> 1 day).
lists_stale=1
if ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1; then
    if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages' -mtime +1 -print -quit)" ]; then
        lists_stale=0
    fi
fi

if [ -n "$missing" ] || [ "$lists_stale" = 1 ]; then
    # apt-get update has no lock timeout option of its own for the lists lock:
    # retry while another process holds it.
    tries=0
    until apt-get $APT_OPTS -qq update; do
        tries=$((tries + 1))
        if [ "$tries" -ge 90 ]; then
            echo "install-deps.sh: apt-get update kept failing" >&2
            exit 1
        fi
        echo "install-deps.sh: apt-get update failed (lock held?), retrying in 10 s" >&2
        sleep 10
    done
fi

if [ -n "$missing" ]; then
    echo "install-deps.sh: installing:$missing"
    # openssh-server's sshd serves the kdump ssh-target test on 127.0.0.1 only, started by the
    # test itself: the package must not start a daemon on every address here (policy-rc.d 101
    # forbids it), and its unit stays disabled.
    policy_added=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        policy_added=1
    fi
    # shellcheck disable=SC2086
    apt-get $APT_OPTS install -y -q --no-install-recommends $missing || install_rc=$?
    if [ "$policy_added" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    if [ "${install_rc:-0}" != 0 ]; then exit "$install_rc"; fi
    if command -v systemctl >/dev/null 2>&1; then systemctl disable ssh.service >/dev/null 2>&1 || true; fi
else
    echo "install-deps.sh: all packages already installed"
fi
