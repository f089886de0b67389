#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests.
#
#   pg-cluster.sh start DIR   initdb DIR/data (superuser "sigil"), start it on a
#                             free 127.0.0.1 port, write the DSN to DIR/dsn and
#                             print it; reuses a cluster already running from DIR
#   pg-cluster.sh stop DIR    stop that cluster and remove DIR
#
# The cluster is independent of any system cluster (Debian's on port 5432 is
# neither used nor touched). PostgreSQL refuses to run as root, so as root the
# server runs as the "postgres" system user (or a "sigil-pg" system user,
# created if neither exists). PG_BINDIR overrides the server binaries' directory.
set -euo pipefail

MARKER=.sigil-pg-cluster
FALLBACK_USER=sigil-pg

die() { echo "pg-cluster: $*" >&2; exit 1; }

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }

bindir() {
    if [ -n "${PG_BINDIR:-}" ]; then
        [ -x "$PG_BINDIR/pg_ctl" ] || die "PG_BINDIR=$PG_BINDIR has no pg_ctl"
        echo "$PG_BINDIR"
        return
    fi
    local v
    v=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$v" ] || [ ! -x "/usr/lib/postgresql/$v/bin/initdb" ]; then
        die "PostgreSQL server binaries not found under /usr/lib/postgresql (install them: make deps, or apt-get install postgresql)"
    fi
    echo "/usr/lib/postgresql/$v/bin"
}

# The user the server runs as: ourselves, or an unprivileged user when root.
server_user() {
    if [ "$(id -u)" != 0 ]; then
        id -un
    elif id -u postgres >/dev/null 2>&1; then
        echo postgres
    else
        id -u "$FALLBACK_USER" >/dev/null 2>&1 ||
            useradd --system --no-create-home --shell /usr/sbin/nologin "$FALLBACK_USER" ||
            die "could not create the system user $FALLBACK_USER"
        echo "$FALLBACK_USER"
    fi
}

# Run a command as USER, from / (PostgreSQL's tools fail in a working
# directory that user cannot read).
as_user() {
    local user=$1
    shift
    if [ "$(id -u)" = 0 ]; then
        (cd / && runuser -u "$user" -- "$@")
    else
        (cd / && "$@")
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The server's paths go into its command line and the Unix socket path
# (DIR/.s.PGSQL.NNNNN, at most 107 bytes), and must be reachable by its user.
usable_home() {
    local home=$1 user=$2
    [[ $home =~ ^[A-Za-z0-9._/+-]+$ ]] && [ "${#home}" -le 80 ] &&
        as_user "$user" test -x "$(dirname "$home")"
}

is_running() {
    local home=$1 user
    [ -f "$home/data/PG_VERSION" ] || return 1
    user=$(stat -c %U "$home/data")
    as_user "$user" "$BIN/pg_ctl" -D "$home/data" status >/dev/null 2>&1
}

# Stop the cluster in DIR (if running) and remove DIR; refuses a directory
# this script did not make.
remove_cluster() {
    local dir=$1 home user
    [ -e "$dir" ] || [ -L "$dir" ] || return 0
    home=$(readlink -f "$dir")
    [ -f "$home/$MARKER" ] || die "$dir is not a cluster made by $0; not touching it"
    if [ -f "$home/data/PG_VERSION" ]; then
        user=$(stat -c %U "$home/data")
        if is_running "$home"; then
            as_user "$user" "$BIN/pg_ctl" -D "$home/data" -m fast -w stop >/dev/null ||
                die "could not stop the cluster in $home/data (see $home/log)"
        fi
    fi
    rm -rf "$home"
    if [ -L "$dir" ]; then rm -f "$dir"; fi
}

start() {
    local dir=$1 home user port attempt
    if [ -e "$dir" ] || [ -L "$dir" ]; then
        home=$(readlink -f "$dir")
        if [ -f "$home/$MARKER" ]; then
            if is_running "$home" && [ -s "$home/dsn" ] &&
                "$BIN/pg_isready" -q -t 5 -d "$(cat "$home/dsn")"; then
                cat "$home/dsn"
                return
            fi
            remove_cluster "$dir" # left over from a run that did not stop it
        elif [ -d "$dir" ] && [ -z "$(ls -A "$dir")" ]; then
            rmdir "$dir"
        else
            die "$dir exists and is not a cluster made by $0"
        fi
    fi

    user=$(server_user)
    mkdir -p "$(dirname "$dir")"
    home=$(readlink -f "$dir")
    if usable_home "$home" "$user"; then
        mkdir -m 700 "$home"
    else
        # DIR's path is too long or odd for PostgreSQL, or not reachable by
        # $user (a checkout under /root): keep the cluster in /tmp, DIR links to it.
        home=$(mktemp -d /tmp/sigil-pg.XXXXXX)
        ln -s "$home" "$dir"
    fi
    touch "$home/$MARKER"
    chown "$user" "$home"
    chmod 700 "$home"

    # Trust authentication for any local user: acceptable only because this
    # is a throwaway test cluster listening on 127.0.0.1 alone (and a socket
    # in a mode-700 directory).
    as_user "$user" "$BIN/initdb" -D "$home/data" -U sigil --auth=trust \
        -E UTF8 --locale=C.UTF-8 >"$home/initdb.log" 2>&1 ||
        die "initdb failed: $(tail -n 20 "$home/initdb.log")"

    for attempt in 1 2 3; do
        port=$(free_port)
        if as_user "$user" "$BIN/pg_ctl" -D "$home/data" \
            -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$home -c fsync=on -c max_connections=200" \
            -l "$home/log" -w start >/dev/null; then
            echo "host=127.0.0.1 port=$port user=sigil dbname=postgres" >"$home/dsn"
            cat "$home/dsn"
            return
        fi
        # Another process may have taken the port between probe and bind.
        grep -q 'could not bind\|could not create any TCP/IP sockets' "$home/log" 2>/dev/null || break
        echo "pg-cluster: port $port taken, retrying ($attempt)" >&2
    done
    die "could not start PostgreSQL in $home/data: $(tail -n 20 "$home/log" 2>/dev/null)"
}

[ $# = 2 ] || usage
[ -n "$2" ] || usage
DIR=$(realpath -m -s "$2")
[ "$DIR" != / ] || die "refusing DIR=/"
BIN=$(bindir)

case $1 in
    start) start "$DIR" ;;
    stop) remove_cluster "$DIR" ;;
    *) usage ;;
esac
