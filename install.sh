#!/bin/sh
# pikube installer: a server (the default) or an agent, as a systemd service.
#
#   curl -sfL https://get.pikube.dev/install.sh | sh -
#   curl -sfL https://get.pikube.dev/install.sh | PIKUBE_URL=https://<server>:6443 PIKUBE_TOKEN=<agent token> sh -
#
# Arguments after `sh -s -` are extra flags of `pikube server` (or `pikube agent`); a first
# argument `server` or `agent` chooses the command. Running it again upgrades in place.
#
# Environment (as k3s's INSTALL_K3S_* variables):
#   PIKUBE_URL, PIKUBE_TOKEN     join a server as an agent (both kept in the service's env file);
#                                the token: the server's /var/lib/pikube/server/agent-token, or
#                                one from `pikube token create`
#   PIKUBE_TOKEN (server)        the server token: other servers join with it (--token)
#   PIKUBE_AGENT_TOKEN (server)  the agent token to use instead of a generated one (--agent-token)
#   INSTALL_PIKUBE_EXEC          extra flags of the service, e.g. "--disable-agent --node-label a=b"
#   INSTALL_PIKUBE_VERSION       release to download (default: the latest)
#   INSTALL_PIKUBE_URL           where releases are (default https://github.com/pikube/pikube/releases):
#                                <url>/download/<version>/pikube-<arch> and sha256sum-<arch>.txt,
#                                or <url>/latest/download/… without a version
#   INSTALL_PIKUBE_BIN_PATH      install this local binary instead of downloading (air gap)
#   INSTALL_PIKUBE_SKIP_APT      true: do not install the Debian packages
#   INSTALL_PIKUBE_SKIP_ENABLE   true: neither enable nor start the service
#   INSTALL_PIKUBE_SKIP_START    true: enable the service but do not start it
#   INSTALL_PIKUBE_BIN_DIR       where pikube and the uninstall script go (default /usr/local/bin)
#   INSTALL_PIKUBE_SYSTEMD_DIR   where the unit and its env file go (default /etc/systemd/system)
#   INSTALL_PIKUBE_CONFIG_DIR    config.yaml and the kubeconfig (default /etc/pikube)
#   INSTALL_PIKUBE_LOG_FILE      log of a pikube started by hand (default /var/log/pikube.log)
#   INSTALL_PIKUBE_READY_TIMEOUT seconds to wait for the node to be Ready (default 120)
#   INSTALL_PIKUBE_CGROUP_DIR, INSTALL_PIKUBE_PROC_DIR
#                                where the memory cgroup is looked for (default /sys/fs/cgroup, /proc)
set -ef

PACKAGES="containerd runc nftables containernetworking-plugins iproute2"
# Put into each directory install.sh creates (or finds holding only pikube's files); the
# uninstall script deletes only directories that carry it.
MARKER=.pikube-owned
# Never pikube's own: the uninstall script would delete them.
SYSTEM_DIRS="/ /bin /boot /boot/firmware /dev /etc /etc/default /etc/systemd /etc/systemd/system
/home /lib /lib32 /lib64 /libx32 /lost+found /media /mnt /opt /proc /root /run /run/user /sbin
/srv /sys /tmp /usr /usr/bin /usr/include /usr/lib /usr/lib32 /usr/lib64 /usr/libexec
/usr/local /usr/local/bin /usr/local/etc /usr/local/lib /usr/local/sbin /usr/local/share
/usr/sbin /usr/share /usr/src /var /var/backups /var/cache /var/lib /var/local /var/lock
/var/log /var/mail /var/opt /var/run /var/spool /var/tmp"

info() { echo "[INFO]  $*"; }
warn() { echo "[WARN]  $*" >&2; }
fatal() {
    echo "[ERROR] $*" >&2
    exit 1
}

is_true() { [ "$1" = true ]; }

# --- settings -------------------------------------------------------------------------

setup_env() {
    SUDO=
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || fatal "run this as root (sudo is not installed)"
        SUDO=sudo
    fi

    BIN_DIR=${INSTALL_PIKUBE_BIN_DIR:-/usr/local/bin}
    SYSTEMD_DIR=${INSTALL_PIKUBE_SYSTEMD_DIR:-/etc/systemd/system}
    CONFIG_DIR=${INSTALL_PIKUBE_CONFIG_DIR:-/etc/pikube}
    LOG_FILE=${INSTALL_PIKUBE_LOG_FILE:-/var/log/pikube.log}
    RELEASES=${INSTALL_PIKUBE_URL:-https://github.com/pikube/pikube/releases}
    READY_TIMEOUT=${INSTALL_PIKUBE_READY_TIMEOUT:-120}
    CGROUP_DIR=${INSTALL_PIKUBE_CGROUP_DIR:-/sys/fs/cgroup}
    PROC_DIR=${INSTALL_PIKUBE_PROC_DIR:-/proc}

    # The flags: INSTALL_PIKUBE_EXEC, then the script's arguments (split on blanks).
    EXEC=$(echo "${INSTALL_PIKUBE_EXEC:-} $*" | tr -s '\t ' '  ' | sed 's/^ //; s/ $//')
    case "$EXEC" in
        server | server\ *) CMD=server EXEC=${EXEC#server} ;;
        agent | agent\ *) CMD=agent EXEC=${EXEC#agent} ;;
        *) if [ -n "${PIKUBE_URL:-}" ]; then CMD=agent; else CMD=server; fi ;;
    esac
    EXEC=${EXEC# }
    if [ "$CMD" = agent ]; then
        [ -n "${PIKUBE_URL:-}" ] || has_flag --server || fatal "an agent needs PIKUBE_URL (the server's https://<address>:6443)"
        [ -n "${PIKUBE_TOKEN:-}" ] || has_flag --token || fatal "an agent needs PIKUBE_TOKEN (the server's /var/lib/pikube/server/agent-token, or one from \`pikube token create\`)"
        case "${PIKUBE_URL:-https://}" in
            https://*) ;;
            *) fatal "PIKUBE_URL must be an https:// URL such as https://192.168.1.10:6443, not ${PIKUBE_URL}" ;;
        esac
        NAME=pikube-agent
    else
        NAME=pikube
    fi

    BIN=$BIN_DIR/pikube
    UNIT=$SYSTEMD_DIR/$NAME.service
    ENV_FILE=$UNIT.env
    UNINSTALL=$BIN_DIR/$NAME-uninstall.sh
    DATA_DIR=$(flag_value --data-dir /var/lib/pikube)
    RUN_DIR=$(flag_value --run-dir /run/pikube)
    KUBECONFIG_FILE=$(flag_value --write-kubeconfig "$CONFIG_DIR/pikube.yaml")
    CONFIG_FILE=$(flag_value --config "$CONFIG_DIR/config.yaml")
    API_PORT=$(flag_value --https-listen-port 6443)
    # The uninstall script deletes these trees: absolute paths other than / only.
    for dir in "$DATA_DIR" "$RUN_DIR" "$CONFIG_DIR" "$BIN_DIR" "$SYSTEMD_DIR"; do
        case "$dir" in
            /*[!/]*) ;;
            *) fatal "$dir: the installation's directories must be absolute paths other than /" ;;
        esac
    done
    DATA_DIR=$(canonical "$DATA_DIR")
    RUN_DIR=$(canonical "$RUN_DIR")
    CONFIG_DIR=$(canonical "$CONFIG_DIR")
    own_dir "the data dir (--data-dir)" "$DATA_DIR" /var/lib/pikube
    own_dir "the run dir (--run-dir)" "$RUN_DIR" /run/pikube
    own_dir "the config dir (INSTALL_PIKUBE_CONFIG_DIR)" "$CONFIG_DIR" /etc/pikube

    # Paths that differ from pikube's own defaults become flags of the service.
    FLAGS=$EXEC
    if [ "$CONFIG_FILE" != /etc/pikube/config.yaml ] && ! has_flag --config; then
        FLAGS="--config $CONFIG_FILE $FLAGS"
    fi
    if [ "$CMD" = server ] && [ "$KUBECONFIG_FILE" != /etc/pikube/pikube.yaml ] && ! has_flag --write-kubeconfig; then
        FLAGS="--write-kubeconfig $KUBECONFIG_FILE $FLAGS"
    fi
    FLAGS=${FLAGS% }

    NODE_AGENT=true
    if [ "$CMD" = server ] && has_flag --disable-agent; then
        NODE_AGENT=false
    fi
}

# canonical DIR: DIR absolute, without `.`, `..`, repeated or trailing slashes, and
# symbolic links resolved where it exists.
canonical() {
    realpath -m -- "$1" 2>/dev/null || echo "$1" | sed 's://*:/:g; s:/$::'
}

# own_dir WHAT DIR EXAMPLE: stops unless DIR can be pikube's own directory, which the
# uninstall script deletes: not a system directory, a home directory, or one holding
# pikube's binary or unit.
own_dir() {
    for system in $SYSTEM_DIRS; do
        [ "$2" != "$system" ] || fatal "$1 $2 is a system directory: pikube needs a directory of its own, such as $3"
    done
    case "$2" in
        /home/*/*) ;;
        /home/*) fatal "$1 $2 is a home directory: pikube needs a directory of its own, such as $3" ;;
    esac
    for inside in "$(canonical "$BIN_DIR")" "$(canonical "$SYSTEMD_DIR")"; do
        case "$inside/" in
            "$2"/*) fatal "$1 $2 holds $inside: pikube needs a directory of its own, such as $3" ;;
        esac
    done
}

# has_flag NAME: the flags name NAME (`--name value`, `--name=value` or `--name`).
has_flag() {
    for word in $EXEC; do
        case "$word" in
            "$1" | "$1"=*) return 0 ;;
        esac
    done
    return 1
}

# flag_value NAME DEFAULT: the value given to NAME in the flags (the last one wins).
flag_value() {
    value=$2
    next=false
    for word in $EXEC; do
        if [ "$next" = true ]; then
            value=$word
            next=false
            continue
        fi
        case "$word" in
            "$1") next=true ;;
            "$1"=*) value=${word#"$1"=} ;;
        esac
    done
    echo "$value"
}

# disables COMPONENT: the flags turn COMPONENT off (`--disable dns`, `--disable=dns`).
disables() {
    prev=
    for word in $EXEC; do
        if [ "$prev" = --disable ] && [ "$word" = "$1" ]; then
            return 0
        fi
        [ "$word" = "--disable=$1" ] && return 0
        prev=$word
    done
    return 1
}

# --- checks ---------------------------------------------------------------------------

has_systemd() {
    [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
}

detect_arch() {
    if command -v dpkg >/dev/null 2>&1; then
        ARCH=$(dpkg --print-architecture)
    else
        ARCH=$(uname -m)
    fi
    case "$ARCH" in
        amd64 | x86_64) ARCH=amd64 ;;
        arm64 | aarch64) ARCH=arm64 ;;
        armhf | armv7l | armv7* | armv6l | arm) ARCH=armhf ;;
        *) fatal "unsupported architecture $ARCH (pikube runs on amd64, arm64 and armhf)" ;;
    esac
    info "Architecture: $ARCH"
}

# The node agent needs the memory cgroup; Raspberry Pi OS ships with it off.
check_memory_cgroup() {
    [ "$NODE_AGENT" = true ] || return 0
    if [ -f "$CGROUP_DIR/cgroup.controllers" ]; then
        if tr ' ' '\n' <"$CGROUP_DIR/cgroup.controllers" | grep -qx memory; then
            info "Memory cgroup: enabled (cgroup v2)"
            return 0
        fi
    elif [ -f "$PROC_DIR/cgroups" ] && awk '$1 == "memory" && $4 == 1 { found = 1 } END { exit !found }' "$PROC_DIR/cgroups"; then
        info "Memory cgroup: enabled (cgroup v1)"
        return 0
    fi
    cmdline=/boot/firmware/cmdline.txt
    if [ ! -f "$cmdline" ] && [ -f /boot/cmdline.txt ]; then
        cmdline=/boot/cmdline.txt
    fi
    model=$(tr -d '\0' <"$PROC_DIR/device-tree/model" 2>/dev/null || true)
    echo "[ERROR] The memory cgroup is not enabled in this kernel, and pods need it." >&2
    case "$model" in
        "Raspberry Pi"*)
            echo "[ERROR] On Raspberry Pi OS ($model), append cgroup_memory=1 cgroup_enable=memory to the single line of $cmdline and reboot:" >&2 ;;
        *)
            echo "[ERROR] Add cgroup_memory=1 cgroup_enable=memory to the kernel command line (on a Raspberry Pi: the single line of $cmdline) and reboot, e.g.:" >&2 ;;
    esac
    echo "    sudo sed -i '1 s/\$/ cgroup_memory=1 cgroup_enable=memory/' $cmdline && sudo reboot" >&2
    echo "[ERROR] Then run this installer again. (A server without a node, INSTALL_PIKUBE_EXEC=--disable-agent, does not need it.)" >&2
    exit 1
}

install_packages() {
    if is_true "${INSTALL_PIKUBE_SKIP_APT:-}"; then
        info "Skipping the system packages (INSTALL_PIKUBE_SKIP_APT=true)"
        return 0
    fi
    if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
        fatal "apt-get is not available: install $PACKAGES with your package manager, then run this again with INSTALL_PIKUBE_SKIP_APT=true"
    fi
    missing=
    for p in $PACKAGES; do
        if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed'; then
            missing="$missing $p"
        fi
    done
    if [ -z "$missing" ]; then
        info "System packages: all installed ($PACKAGES)"
        return 0
    fi
    info "Installing system packages:$missing"
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086 # one word per package
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

# --- the binary -----------------------------------------------------------------------

download() {
    if command -v curl >/dev/null 2>&1; then
        curl -fsSL -o "$2" "$1"
    elif command -v wget >/dev/null 2>&1; then
        wget -qO "$2" "$1"
    else
        fatal "neither curl nor wget is installed"
    fi
}

install_binary() {
    TMP_DIR=$(mktemp -d)
    trap 'rm -rf "$TMP_DIR"' EXIT
    if [ -n "${INSTALL_PIKUBE_BIN_PATH:-}" ]; then
        [ -f "$INSTALL_PIKUBE_BIN_PATH" ] || fatal "INSTALL_PIKUBE_BIN_PATH: no such file: $INSTALL_PIKUBE_BIN_PATH"
        info "Installing the local binary $INSTALL_PIKUBE_BIN_PATH"
        cp "$INSTALL_PIKUBE_BIN_PATH" "$TMP_DIR/pikube"
    else
        if [ -n "${INSTALL_PIKUBE_VERSION:-}" ]; then
            base=$RELEASES/download/$INSTALL_PIKUBE_VERSION
        else
            base=$RELEASES/latest/download
        fi
        info "Downloading $base/pikube-$ARCH"
        download "$base/sha256sum-$ARCH.txt" "$TMP_DIR/sha256sum.txt" ||
            fatal "cannot download $base/sha256sum-$ARCH.txt"
        download "$base/pikube-$ARCH" "$TMP_DIR/pikube" ||
            fatal "cannot download $base/pikube-$ARCH"
        expected=$(awk -v f="pikube-$ARCH" '$2 == f || $2 == "*" f { print $1 }' "$TMP_DIR/sha256sum.txt")
        [ -n "$expected" ] || fatal "sha256sum-$ARCH.txt has no line for pikube-$ARCH"
        actual=$(sha256sum "$TMP_DIR/pikube" | awk '{ print $1 }')
        [ "$expected" = "$actual" ] ||
            fatal "sha256 mismatch for pikube-$ARCH: expected $expected, downloaded $actual (nothing was installed)"
        info "Verified sha256 $actual"
    fi
    chmod 0755 "$TMP_DIR/pikube"
    version=$("$TMP_DIR/pikube" --version 2>/dev/null) ||
        fatal "the binary does not run on this machine (wrong architecture?)"
    # Copied next to the target, then renamed: a running pikube keeps its (old) file,
    # and nobody sees a half-written binary.
    $SUDO mkdir -p "$BIN_DIR"
    $SUDO cp "$TMP_DIR/pikube" "$BIN.new"
    $SUDO mv -f "$BIN.new" "$BIN"
    info "Installed $version as $BIN"
}

# --- files ----------------------------------------------------------------------------

# quote VALUE: VALUE in single quotes for sh and systemd's EnvironmentFile.
quote() {
    printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"
}

# claim DIR NAME…: marks DIR as pikube's (the uninstall script deletes it) when it is new,
# empty, marked already, or holds nothing but the entries NAME…; else it is left alone,
# and unmarked, with a warning.
claim() {
    dir=$1
    shift
    if [ -d "$dir" ] && [ ! -f "$dir/$MARKER" ]; then
        other=$($SUDO find "$dir" -mindepth 1 -maxdepth 1 -exec basename {} \; |
            grep -vxF "$(printf '%s\n' "$@")" | head -n 1)
        if [ -n "$other" ]; then
            warn "$dir existed and holds $other: not marking it as pikube's; the uninstall script will leave it"
            return 0
        fi
    elif [ -e "$dir" ] && [ ! -d "$dir" ]; then
        fatal "$dir is not a directory"
    fi
    $SUDO mkdir -p "$dir"
    echo "Created for pikube by install.sh; $UNINSTALL deletes this directory." |
        $SUDO tee "$dir/$MARKER" >/dev/null
}

claim_dirs() {
    claim "$DATA_DIR" server agent
    claim "$RUN_DIR" containerd runc
    claim "$CONFIG_DIR" config.yaml pikube.yaml
}

write_config() {
    $SUDO mkdir -p "$CONFIG_DIR"
    if [ ! -e "$CONFIG_FILE" ]; then
        echo "# pikube $CMD settings: keys are the flag names of \`pikube $CMD --help\`, e.g. node-label: [a=b]" |
            $SUDO tee "$CONFIG_FILE" >/dev/null
    fi
}

write_env_file() {
    info "Writing $ENV_FILE"
    $SUDO mkdir -p "$SYSTEMD_DIR"
    $SUDO sh -c "umask 077; : > '$ENV_FILE'"
    {
        [ -n "${PIKUBE_URL:-}" ] && [ "$CMD" = agent ] && echo "PIKUBE_URL=$(quote "$PIKUBE_URL")"
        [ -n "${PIKUBE_TOKEN:-}" ] && echo "PIKUBE_TOKEN=$(quote "$PIKUBE_TOKEN")"
        [ -n "${PIKUBE_AGENT_TOKEN:-}" ] && [ "$CMD" = server ] && echo "PIKUBE_AGENT_TOKEN=$(quote "$PIKUBE_AGENT_TOKEN")"
        env | grep -E '^(HTTP_PROXY|HTTPS_PROXY|NO_PROXY|http_proxy|https_proxy|no_proxy)=' |
            while IFS='=' read -r key value; do echo "$key=$(quote "$value")"; done
        true
    } | $SUDO tee "$ENV_FILE" >/dev/null
}

write_unit() {
    info "Writing $UNIT"
    if [ "$CMD" = agent ]; then
        description="pikube agent: a Kubernetes node that joins a pikube server"
    else
        description="pikube server: a Kubernetes distribution in one binary"
    fi
    $SUDO tee "$UNIT" >/dev/null <<EOF
[Unit]
Description=$description
Documentation=https://github.com/pikube/pikube
Wants=network-online.target
After=network-online.target containerd.service

[Install]
WantedBy=multi-user.target

[Service]
Type=simple
EnvironmentFile=-/etc/default/%N
EnvironmentFile=-$ENV_FILE
# Pod containers outlive a restart of pikube; \`pikube killall\` stops them.
KillMode=process
Delegate=yes
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
TimeoutStartSec=0
Restart=always
RestartSec=5s
ExecStartPre=-/sbin/modprobe br_netfilter
ExecStartPre=-/sbin/modprobe overlay
$(run_dir_marker)
ExecStart=$BIN $CMD${FLAGS:+ $FLAGS}
EOF
}

# Unit lines that mark the run dir again after a reboot emptied it (a tmpfs), when it is
# pikube's.
run_dir_marker() {
    [ -f "$RUN_DIR/$MARKER" ] || return 0
    echo "ExecStartPre=-/bin/mkdir -p \"$RUN_DIR\""
    echo "ExecStartPre=-/usr/bin/touch \"$RUN_DIR/$MARKER\""
}

write_uninstall() {
    info "Writing $UNINSTALL"
    killall_flags="--data-dir '$DATA_DIR' --run-dir '$RUN_DIR' --cgroup-root '$(flag_value --cgroup-root /kubepods)' --cni-bridge '$(flag_value --cni-bridge cni0)'"
    if [ "$NODE_AGENT" = false ] || disables proxy; then
        killall_flags="$killall_flags --keep-proxy"
    fi
    # The cluster DNS address pikube puts on `lo` (none with --dns-listen-address).
    cluster_dns=
    if ! has_flag --dns-listen-address && ! disables dns; then
        cluster_dns=$(flag_value --cluster-dns 10.43.0.10)
    fi
    kubeconfig=
    [ "$CMD" = server ] && kubeconfig=$KUBECONFIG_FILE
    $SUDO tee "$UNINSTALL" >/dev/null <<EOF
#!/bin/sh
# Removes what install.sh installed for $NAME: the service, pikube's containers, nftables
# table, routes, interfaces and mounts (\`pikube killall\`), its data, config and binary.
set -e
if [ "\$(id -u)" -ne 0 ]; then
    exec sudo "\$0" "\$@"
fi
BIN='$BIN'
NAME='$NAME'
UNIT='$UNIT'
DATA_DIR='$DATA_DIR'
RUN_DIR='$RUN_DIR'
CONFIG_DIR='$CONFIG_DIR'
KUBECONFIG_FILE='$kubeconfig'
LOG_FILE='$LOG_FILE'
CLUSTER_DNS='$cluster_dns'
MARKER='$MARKER'

info() { echo "[INFO]  \$*"; }

if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    info "Stopping and disabling \$NAME.service"
    systemctl stop "\$NAME" 2>/dev/null || true
    systemctl disable "\$NAME" 2>/dev/null || true
fi

# A pikube started by hand: the processes running this binary (or the file it replaced).
pids() {
    for p in /proc/[0-9]*; do
        exe=\$(readlink "\$p/exe" 2>/dev/null) || continue
        if [ "\$exe" = "\$BIN" ] || [ "\$exe" = "\$BIN (deleted)" ]; then
            echo "\${p#/proc/}"
        fi
    done
    true
}
running=\$(pids)
if [ -n "\$running" ]; then
    info "Stopping pikube (pid \$(echo "\$running" | tr '\n' ' '))"
    # shellcheck disable=SC2086 # one word per pid
    kill -TERM \$running 2>/dev/null || true
    n=0
    while [ -n "\$(pids)" ] && [ \$n -lt 20 ]; do
        sleep 1
        n=\$((n + 1))
    done
    running=\$(pids)
    # shellcheck disable=SC2086 # one word per pid
    [ -z "\$running" ] || kill -KILL \$running 2>/dev/null || true
fi

if [ -x "\$BIN" ]; then
    info "Stopping containers, removing pikube's nftables table, routes, interfaces and mounts"
    "\$BIN" killall $killall_flags || true
fi
if [ -n "\$CLUSTER_DNS" ]; then
    ip addr del "\$CLUSTER_DNS/32" dev lo 2>/dev/null || true
fi

info "Removing \$UNIT"
rm -f "\$UNIT" "\$UNIT.env"
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload || true
fi
for other in "\${UNIT%/*}"/pikube*.service; do
    if [ -f "\$other" ]; then
        info "\$other is still installed: keeping the binary and the data"
        rm -f "\$0"
        exit 0
    fi
done

# Never remove a tree while something is still mounted below it.
mounts_below() {
    awk -v d="\$1" '\$2 == d || index(\$2, d "/") == 1 { print \$2 }' /proc/self/mounts | sort -r
}
for dir in "\$DATA_DIR" "\$RUN_DIR"; do
    for m in \$(mounts_below "\$dir"); do
        umount -l "\$m" 2>/dev/null || true
    done
    if [ -n "\$(mounts_below "\$dir")" ]; then
        echo "[ERROR] still mounted below \$dir: \$(mounts_below "\$dir" | tr '\n' ' '); not removing it" >&2
        exit 1
    fi
done

# Only directories install.sh made pikube's (they carry \$MARKER) are deleted.
for dir in "\$DATA_DIR" "\$RUN_DIR" "\$CONFIG_DIR"; do
    if [ -f "\$dir/\$MARKER" ]; then
        info "Removing \$dir"
        rm -rf "\$dir"
    elif [ -e "\$dir" ]; then
        echo "[WARN]  Leaving \$dir: it has no \$MARKER (install.sh did not create it for pikube); remove pikube's files from it by hand" >&2
    fi
done
info "Removing \$BIN"
[ -z "\$KUBECONFIG_FILE" ] || rm -f "\$KUBECONFIG_FILE"
rm -f "\$LOG_FILE" "\$BIN"
rm -f "\$0"
info "pikube is uninstalled"
EOF
    $SUDO chmod 0755 "$UNINSTALL"
}

# --- the service ----------------------------------------------------------------------

by_hand_command() {
    echo "(set -a; . \"$ENV_FILE\"; exec \"$BIN\" $CMD${FLAGS:+ $FLAGS}) >>\"$LOG_FILE\" 2>&1 &"
}

wait_ready() {
    info "Waiting up to ${READY_TIMEOUT}s for the node to be Ready"
    deadline=$(($(date +%s) + READY_TIMEOUT))
    if [ "$CMD" = agent ]; then
        what="the agent to join $PIKUBE_URL"
        ready() { [ -s "$DATA_DIR/agent/kubeconfig" ]; }
    elif ! command -v kubectl >/dev/null 2>&1; then
        warn "kubectl is not installed: waiting for the kubeconfig only (pikube kubectl runs the system kubectl)"
        what="the API server"
        ready() { [ -s "$KUBECONFIG_FILE" ]; }
    elif [ "$NODE_AGENT" = false ]; then
        what="the API server"
        ready() { KUBECONFIG=$KUBECONFIG_FILE "$BIN" kubectl get --raw /readyz >/dev/null 2>&1; }
    else
        what="the node to be Ready"
        ready() { KUBECONFIG=$KUBECONFIG_FILE "$BIN" kubectl wait --for=condition=Ready nodes --all --timeout=5s >/dev/null 2>&1; }
    fi
    while ! ready; do
        if $SUDO systemctl is-failed --quiet "$NAME"; then
            fatal "$NAME.service failed; see: journalctl -u $NAME"
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            fatal "timed out waiting for $what; see: journalctl -u $NAME"
        fi
        printf '.'
        sleep 2
    done
    echo
    info "Ready"
}

start_service() {
    if is_true "${INSTALL_PIKUBE_SKIP_ENABLE:-}"; then
        info "Not enabling $NAME.service (INSTALL_PIKUBE_SKIP_ENABLE=true)"
        if has_systemd; then
            info "Start it with: systemctl enable --now $NAME"
        else
            no_systemd
        fi
        return 1
    fi
    if ! has_systemd; then
        warn "systemd is not running on this machine: $NAME is installed but not started"
        no_systemd
        return 1
    fi
    info "Enabling $NAME.service"
    $SUDO systemctl daemon-reload
    $SUDO systemctl enable "$NAME" >/dev/null 2>&1
    if is_true "${INSTALL_PIKUBE_SKIP_START:-}"; then
        info "Not starting $NAME.service (INSTALL_PIKUBE_SKIP_START=true)"
        return 1
    fi
    info "Starting $NAME.service"
    $SUDO systemctl restart "$NAME"
    wait_ready
}

no_systemd() {
    info "Start it by hand (as root; it logs to $LOG_FILE):"
    echo "    $(by_hand_command)"
    info "Stop it with SIGTERM (kill <pid>); $UNINSTALL stops and removes it"
}

summary() {
    if [ "$CMD" = agent ]; then
        info "This machine joins $PIKUBE_URL as a node; on the server: pikube kubectl get nodes -o wide"
    else
        if [ "$KUBECONFIG_FILE" = /etc/pikube/pikube.yaml ]; then
            kc=
        else
            kc="KUBECONFIG=$KUBECONFIG_FILE "
        fi
        info "Kubeconfig: $KUBECONFIG_FILE (export KUBECONFIG=$KUBECONFIG_FILE to use kubectl directly)"
        info "Next: ${kc}$BIN kubectl get nodes"
        info "Join more machines: curl -sfL <install.sh URL> | PIKUBE_URL=https://<this machine's address>:$API_PORT PIKUBE_TOKEN=\$(sudo cat $DATA_DIR/server/agent-token) sh -"
    fi
    info "Uninstall: $UNINSTALL"
}

main() {
    setup_env "$@"
    info "Installing pikube $CMD"
    check_memory_cgroup
    detect_arch
    install_packages
    install_binary
    claim_dirs
    write_config
    write_env_file
    write_unit
    write_uninstall
    start_service || true
    summary
}

main "$@"
