#!/bin/sh
# Showroom's vast.ai onstart script: vast runs it at every start of the instance (SSH launch mode).
# docker/vast.py sends it, full-line comments removed (vast caps onstart at 4048 characters).
#   1. writes the container's environment where SSH logins read it (they do not inherit it),
#   2. starts the backend with the contract's command, as the image's non-root user,
#   3. prints the public URL (PUBLIC_IPADDR and VAST_TCP_PORT_8000, both set by vast).
# It prints variable names, never values: the environment holds API keys.
# SHOWROOM_DRY_RUN=1 prints the commands instead of running them (used by tests/deploy);
# SHOWROOM_ENV_FILE, SHOWROOM_APP_DIR, SHOWROOM_USER and SHOWROOM_LOG override the defaults.
# POSIX sh on purpose: vast may run it with sh rather than bash.
set -eu

APP_DIR="${SHOWROOM_APP_DIR:-/app}"
APP_USER="${SHOWROOM_USER:-showroom}"
DRY="${SHOWROOM_DRY_RUN:-0}"
export PATH="/opt/venv/bin:$PATH"
if [ "$(id -u)" = 0 ]; then LOG="${SHOWROOM_LOG:-/var/log/showroom.log}"; else LOG="${SHOWROOM_LOG:-/tmp/showroom.log}"; fi

# 1. The environment for SSH sessions, rewritten between markers so a restart does not pile it up.
if [ "$DRY" = 1 ] && [ -z "${SHOWROOM_ENV_FILE:-}" ]; then
    ENV_FILE=""
    echo "+ (dry run) would write the environment to /etc/environment"
else
    ENV_FILE="${SHOWROOM_ENV_FILE:-/etc/environment}"
fi
if [ -n "$ENV_FILE" ]; then
    tmp="$ENV_FILE.showroom.$$"
    umask 077
    {
        if [ -f "$ENV_FILE" ]; then sed '/^# >>> showroom/,/^# <<< showroom/d' "$ENV_FILE"; fi
        echo "# >>> showroom: written by docker/onstart.sh at each start"
        # awk's ENVIRON holds each value whole; `env | read` would take a value's second line for a variable.
        # A value with a double quote or a newline cannot be written as NAME="value": it is left out.
        awk 'BEGIN {
            for (name in ENVIRON) {
                value = ENVIRON[name]
                if (name !~ /^[A-Za-z_][A-Za-z0-9_]*$/) continue
                if (name ~ /^(HOME|PWD|OLDPWD|SHLVL|_|TERM|HOSTNAME|SHOWROOM_.*)$/) continue
                why = index(value, "\"") ? "a double quote" : index(value, "\n") ? "a newline" : ""
                if (why != "") { print "skipping " name ": its value holds " why > "/dev/stderr"; continue }
                printf "%s=\"%s\"\n", name, value
            }
        }'
        echo "# <<< showroom"
    } >"$tmp"
    mv "$tmp" "$ENV_FILE"
    count=$(sed -n '/^# >>> showroom/,/^# <<< showroom/p' "$ENV_FILE" | grep -c '=' || true)
    echo "exported $count variables to $ENV_FILE for SSH sessions"
fi

# 2. The backend, in the background; as APP_USER when this runs as root (vast's SSH mode does).
if [ "$(id -u)" = 0 ] && id "$APP_USER" >/dev/null 2>&1; then
    home=$(getent passwd "$APP_USER" | cut -d: -f6)
    set -- setpriv "--reuid=$(id -u "$APP_USER")" "--regid=$(id -g "$APP_USER")" --init-groups env "HOME=$home"
else
    set --
fi
# SHOWROOM_ROLE=node (docker/vast.py up --role node): a GPU node instead, which opens no port.
ROLE="${SHOWROOM_ROLE:-backend}"
if [ "$ROLE" = node ]; then
    set -- "$@" python -m backend.node --name "${SHOWROOM_NODE_NAME:-$(hostname)}"
else
    set -- "$@" uvicorn backend.main:app --host 0.0.0.0 --port 8000
fi
if [ "$DRY" = 1 ]; then
    echo "+ cd $APP_DIR"
    echo "+ nohup $* >>$LOG 2>&1 &"
else
    cd "$APP_DIR"
    nohup "$@" >>"$LOG" 2>&1 &
    echo "$ROLE started (pid $!), log: $LOG"
fi
if [ "$ROLE" = node ]; then
    echo "GPU node ${SHOWROOM_NODE_NAME:-$(hostname)}: it pulls work from BROKER_URL and shows in the backend's /health"
    exit 0
fi

# 3. Where the frontend finds it.
if [ -n "${PUBLIC_IPADDR:-}" ] && [ -n "${VAST_TCP_PORT_8000:-}" ]; then
    echo "Showroom backend: http://$PUBLIC_IPADDR:$VAST_TCP_PORT_8000"
    echo "Set the frontend's BACKEND_URL to it; it answers once GET /health says \"ok\"."
else
    echo "no public port for 8000: create the instance with the docker option -p 8000:8000" >&2
fi
