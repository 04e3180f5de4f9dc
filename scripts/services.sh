#!/usr/bin/env bash
# Make sure the servers the tests and the demo talk to answer: RabbitMQ on 5672, Redis on 6379.
#
# - Running already: nothing to do.
# - Installed but stopped: started, then waited for until they answer.
# - Missing, on Debian or Ubuntu as root (or with password-less sudo): installed from the
#   distribution's packages (said first), started, waited for.
# - Missing anywhere else: one line naming what is missing and how to get it; exit 1 at once.
#
# For the tests of this script: SPECTACLES_RABBITMQ_PORT / SPECTACLES_REDIS_PORT (the ports
# checked), SPECTACLES_OS_RELEASE (the os-release file read), SPECTACLES_SERVICES_DRY_RUN=1
# (say what would be installed and started, change nothing).
set -uo pipefail

RABBITMQ_PORT=${SPECTACLES_RABBITMQ_PORT:-5672}
REDIS_PORT=${SPECTACLES_REDIS_PORT:-6379}
OS_RELEASE=${SPECTACLES_OS_RELEASE:-/etc/os-release}
DRY_RUN=${SPECTACLES_SERVICES_DRY_RUN:-}

say() { echo "services: $*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {  # name port seconds
  local i
  for ((i = 0; i < $3 * 2; i++)); do
    port_open "$2" && return 0
    sleep 0.5
  done
  say "$1 did not answer on 127.0.0.1:$2 after $3 s"
  return 1
}

# -- what is missing ------------------------------------------------------------------------
need_rabbitmq=0 need_redis=0
port_open "$RABBITMQ_PORT" || need_rabbitmq=1
port_open "$REDIS_PORT" || need_redis=1
if ((need_rabbitmq == 0 && need_redis == 0)); then
  exit 0
fi

packages=()
names=()
if ((need_rabbitmq)) && ! command -v rabbitmq-server >/dev/null 2>&1; then
  packages+=(rabbitmq-server)
  names+=("RabbitMQ (127.0.0.1:$RABBITMQ_PORT)")
fi
if ((need_redis)) && ! command -v redis-server >/dev/null 2>&1; then
  packages+=(redis-server)
  names+=("Redis (127.0.0.1:$REDIS_PORT)")
fi

# -- install what is not installed ------------------------------------------------------------
if ((${#packages[@]})); then
  missing=$(IFS=,; echo "${names[*]}" | sed 's/,/ and /g')
  os_id="" os_like=""
  if [[ -r $OS_RELEASE ]]; then
    os_id=$(. "$OS_RELEASE" && echo "${ID:-}")
    os_like=$(. "$OS_RELEASE" && echo "${ID_LIKE:-}")
  fi
  debian=0
  case " $os_id $os_like " in *" debian "* | *" ubuntu "*) debian=1 ;; esac
  if ((debian == 0)); then
    say "$missing not running and not installed, and this is not Debian or Ubuntu: install ${packages[*]} with your package manager (or run them in containers), then run this again"
    exit 1
  fi
  as_root=()
  if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      as_root=(sudo -n)
    else
      say "$missing not running and not installed: run this as root (or with sudo) to install ${packages[*]}, or run: sudo apt-get install -y ${packages[*]}"
      exit 1
    fi
  fi
  say "$missing not installed: installing ${packages[*]} from the distribution's packages (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  if [[ -n $DRY_RUN ]]; then
    say "dry run: ${as_root[*]} apt-get update && ${as_root[*]} apt-get install -y ${packages[*]}"
  elif ! { "${as_root[@]}" apt-get update -qq && "${as_root[@]}" apt-get install -y -qq "${packages[@]}" >/dev/null; }; then
    say "apt-get could not install ${packages[*]}"
    exit 1
  fi
fi

# -- start what is stopped ------------------------------------------------------------------
if [[ -n $DRY_RUN ]]; then
  ((need_rabbitmq)) && say "dry run: would start RabbitMQ"
  ((need_redis)) && say "dry run: would start Redis"
  exit 0
fi
if ((need_rabbitmq)) && ! port_open "$RABBITMQ_PORT"; then
  say "starting RabbitMQ"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  wait_port RabbitMQ "$RABBITMQ_PORT" 90 || exit 1
fi
if ((need_redis)) && ! port_open "$REDIS_PORT"; then
  say "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log >/dev/null 2>&1 \
    || redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no >/dev/null 2>&1
  wait_port Redis "$REDIS_PORT" 30 || exit 1
fi
exit 0
