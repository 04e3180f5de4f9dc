#!/usr/bin/env bash
# Make sure the servers the tests and the demo talk to answer: RabbitMQ on 5672, Redis on 6379.
# Starts them if they are installed but not running; waits until they answer (or fails loudly).
set -uo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {  # name port seconds
  local i
  for ((i = 0; i < $3 * 2; i++)); do
    port_open "$2" && return 0
    sleep 0.5
  done
  echo "services: $1 did not answer on 127.0.0.1:$2 after $3 s" >&2
  return 1
}

if ! port_open 5672; then
  if command -v rabbitmq-server >/dev/null 2>&1; then
    echo "services: starting RabbitMQ" >&2
    rabbitmq-server -detached >/dev/null 2>&1 || true
    wait_port RabbitMQ 5672 90 || exit 1
  else
    echo "services: RabbitMQ is not running on 5672 and not installed (apt-get install rabbitmq-server)" >&2
  fi
fi

if ! port_open 6379; then
  if command -v redis-server >/dev/null 2>&1; then
    echo "services: starting Redis" >&2
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log >/dev/null 2>&1 \
      || redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null 2>&1
    wait_port Redis 6379 30 || exit 1
  else
    echo "services: Redis is not running on 6379 and not installed (apt-get install redis-server)" >&2
  fi
fi
exit 0
