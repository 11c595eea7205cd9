#!/usr/bin/env bash
# Makes sure the system tools the end-to-end tests use are present, and that a Redis server
# answers on 127.0.0.1:6379 (starting one when none does).  Installs missing Debian packages when
# running as root with apt-get; otherwise says what is missing and lets the tests skip (or, under
# SBC_REQUIRE_TOOLS=1, fail).
set -u
want=(redis-server:redis-server sipp:sip-tester socat:socat baresip:baresip-core)
missing=()
for pair in "${want[@]}"; do
  tool=${pair%%:*}; pkg=${pair#*:}
  command -v "$tool" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "ensure-deps: installing ${missing[*]}"
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
      || echo "ensure-deps: apt-get install failed for: ${missing[*]}"
  else
    echo "ensure-deps: missing ${missing[*]} (run 'make deps' as root); tests needing them skip"
  fi
fi

redis_up() {
  if command -v redis-cli >/dev/null 2>&1; then
    redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG
  else
    # No client: a bare TCP probe with bash's /dev/tcp.
    (exec 3<>/dev/tcp/127.0.0.1/6379 && printf 'PING\r\n' >&3 && head -c 5 <&3 | grep -q PONG) 2>/dev/null
  fi
}
if ! redis_up; then
  if command -v redis-server >/dev/null 2>&1; then
    echo "ensure-deps: starting redis-server on 127.0.0.1:6379"
    mkdir -p /tmp/sbc-redis
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /tmp/sbc-redis --logfile /tmp/sbc-redis/redis.log >/dev/null
    for _ in $(seq 1 50); do redis_up && break; sleep 0.1; done
    redis_up || echo "ensure-deps: redis-server did not come up (see /tmp/sbc-redis/redis.log)"
  else
    echo "ensure-deps: no Redis on 127.0.0.1:6379 and no redis-server to start"
  fi
fi
exit 0
