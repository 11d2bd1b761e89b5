#!/bin/sh
# Turns on etcd authentication for a gleaner fleet, least privilege:
#
#   root               etcd's administrator (needed to enable auth)
#   gleaner-agent      role gleaner-agent: readwrite <prefix>/nodes/,
#                      <prefix>/tasks/, <prefix>/harvest/; read-only
#                      <prefix>/placements/ (an agent never places work)
#   gleaner-scheduler  role gleaner-scheduler: readwrite <prefix>/
#
# Passwords are random (256 bits) and written to OUT_DIR as
# etcd-root-password, etcd-agent-password, etcd-scheduler-password, 0600.
# Copy the agent's to every agent host (etcd_password_file in agent.toml,
# root-only) and the scheduler's to the scheduler hosts; keep root's off
# the business hosts. Tasks run on those hosts and share their network:
# without a password they get "user name is empty" for every request.
#
# RBAC is by key range: one shared agent user can still write other nodes'
# nodes/ and tasks/ keys (per-node users are a possible follow-up). It can
# never write placements/, jobs/, apps/, queues/ or the leader key.
#
# Usage: ETCDCTL_ENDPOINTS=http://10.0.0.1:2379 \
#        scripts/etcd-auth-setup.sh [--prefix /gleaner] [--out DIR]
set -eu

prefix=/gleaner
out=.
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "etcd-auth-setup: unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$prefix" in
    /*) ;;
    *) echo "etcd-auth-setup: --prefix must start with /" >&2; exit 2 ;;
esac
prefix=${prefix%/}
export ETCDCTL_API=3
: "${ETCDCTL_ENDPOINTS:=http://127.0.0.1:2379}"
export ETCDCTL_ENDPOINTS

umask 077
mkdir -p "$out"
secret() {
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'
}
# A new file per user, 0600 from the first byte (umask); never overwritten.
new_password() {
    f="$out/$1"
    if [ -e "$f" ]; then
        echo "etcd-auth-setup: $f exists; remove it to make a new password" >&2
        exit 1
    fi
    secret >"$f"
}
new_password etcd-root-password
new_password etcd-agent-password
new_password etcd-scheduler-password

# Passwords go on stdin, never on a command line (ps shows those).
add_user() { # name password-file
    etcdctl user add "$1" --interactive=false <"$out/$2" >/dev/null
}

add_user root etcd-root-password
etcdctl user grant-role root root >/dev/null

etcdctl role add gleaner-agent >/dev/null
for p in nodes tasks harvest; do
    etcdctl role grant-permission gleaner-agent readwrite --prefix "$prefix/$p/" >/dev/null
done
etcdctl role grant-permission gleaner-agent read --prefix "$prefix/placements/" >/dev/null
add_user gleaner-agent etcd-agent-password
etcdctl user grant-role gleaner-agent gleaner-agent >/dev/null

etcdctl role add gleaner-scheduler >/dev/null
etcdctl role grant-permission gleaner-scheduler readwrite --prefix "$prefix/" >/dev/null
add_user gleaner-scheduler etcd-scheduler-password
etcdctl user grant-role gleaner-scheduler gleaner-scheduler >/dev/null

etcdctl auth enable >/dev/null
echo "etcd auth enabled for $prefix; passwords in $out (0600)"
