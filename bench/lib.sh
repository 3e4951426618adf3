# Shell functions shared by bench/run.sh and bench/scale.sh (sourced).

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Free ports below the kernel's ephemeral range (so an outgoing connection
# cannot take one between the pick and the bind), never one in use by any socket.
port_in_use() { [ -n "$(ss -Htan "sport = :$1" 2>/dev/null)" ]; }   # any socket, any state
EPHEMERAL_LOW=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
PORT_MIN=10000; PORT_MAX=$(( EPHEMERAL_LOW - 1 ))
[ "$PORT_MAX" -gt $(( PORT_MIN + 1000 )) ] || { PORT_MIN=20000; PORT_MAX=29999; }
USED_PORTS=" "
free_port() {
  local p
  while :; do
    p=$(( PORT_MIN + (RANDOM * 32768 + RANDOM) % (PORT_MAX - PORT_MIN + 1) ))
    case "$USED_PORTS" in *" $p "*) continue ;; esac
    port_in_use "$p" && continue
    USED_PORTS+="$p "
    echo "$p"; return
  done
}

# nginx config pieces: the main context and the http-level settings.
nginx_common() {  # nginx_common DIR WORKERS
  cat <<EOF
daemon off;
master_process on;
worker_processes $2;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 8192; multi_accept on; }
EOF
}
nginx_http_common() {  # nginx_http_common DIR
  cat <<EOF
    access_log off;
    client_body_temp_path $1/client_body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
    default_type text/plain;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
EOF
}

to_ms() {  # wrk latency like 512.00us / 1.23ms / 1.01s -> ms
  awk -v v="$1" 'BEGIN{
    if (v ~ /us$/) { sub(/us$/,"",v); printf "%.3f", v/1000 }
    else if (v ~ /ms$/) { sub(/ms$/,"",v); printf "%.3f", v }
    else if (v ~ /m$/) { sub(/m$/,"",v); printf "%.3f", v*60000 }
    else if (v ~ /s$/) { sub(/s$/,"",v); printf "%.3f", v*1000 }
    else printf "nan" }'
}
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{ if (NR%2) print a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b>0) printf "%.2f×", a/b; else print "–" }'; }
