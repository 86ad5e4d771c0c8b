#!/usr/bin/env bash
# geoblock gateway: turn a Linux box into the gateway whose forwarded web traffic crosses geoblock
# (mitmdump --mode transparent), and back.
#
#   scripts/gateway.sh up   --in-iface eth1 [--port 8080] [--workers N] [--tcp-ports 80,443]
#                           [--exclude CIDR,...] [--no-drop-quic] [--masquerade IF] [--netns NAME] [--dry-run]
#   scripts/gateway.sh down [--netns NAME]
#   scripts/gateway.sh status [--netns NAME]
#
# `up` loads one nftables table (inet geoblock) and sets the forwarding sysctls; it is idempotent: the
# table is replaced atomically (one `nft -f` transaction) and a second run changes nothing else.
# `down` removes exactly that table and restores the sysctls `up` changed, from the state file `up`
# wrote before its first change. Run `scripts/gateway.sh --help` for every option.
set -euo pipefail

PROG=${0##*/}
SELF=$(readlink -f "$0")

usage() {
	cat <<'EOF'
Usage: gateway.sh [up|down|status] [options]

Commands:
  up            load the nftables table and set the sysctls (the default command)
  down          delete the table and restore the sysctls saved by `up`
  status        show the table and the saved sysctl state

Options for up:
  --in-iface IF[,IF...]   client-facing interface(s) whose forwarded traffic is intercepted (required)
  --port PORT             mitmdump's (first) listen port                            (default 8080)
  --workers N             N mitmdump workers on PORT..PORT+N-1; new connections are spread over
                          them round robin (nftables numgen)                          (default 1)
  --tcp-ports LIST        TCP destination ports redirected to mitmdump              (default 80,443)
  --exclude CIDR[,...]    destination networks (IPv4 or IPv6) that bypass the proxy (default none)
  --no-drop-quic          keep forwarding UDP/443 (QUIC); by default it is dropped so that browsers
                          fall back to TCP, where geoblock sees the SNI
  --masquerade IF[,IF...] also source-NAT what is forwarded from --in-iface out of IF (the uplink), for
                          clients with private addresses when no other router does it; the proxied
                          connections need none (mitmdump dials from the gateway's own address)
  --dry-run               check everything `up` would check (the interfaces exist, nftables accepts
                          the ruleset: `nft -c`, which needs root or CAP_NET_ADMIN), print the ruleset
                          and the sysctls, change nothing; exits as `up` would when something is refused

Options for every command:
  --table NAME            the nftables table (family inet)                           (default geoblock)
  --state FILE            the sysctl state file       (default /run/geoblock-gateway/<netns|host>.state)
  --netns NAME            run everything inside network namespace NAME (ip netns exec)
  -h, --help              this text

What `up` does:
  - nftables table inet <table>, replaced atomically:
      prerouting (nat): TCP to --tcp-ports arriving on --in-iface, not addressed to this box and not to
        an --exclude network, is redirected to the mitmdump port(s), IPv4 and IPv6;
      forward (filter): UDP/443 from --in-iface is dropped (unless --no-drop-quic or excluded);
      input (filter): connections to the mitmdump ports that were not redirected (a client dialling
        the proxy port directly) are reset; loopback is allowed;
      output (filter): ICMP and ICMPv6 redirects are dropped;
      postrouting (nat), only with --masquerade: forwarded traffic from --in-iface leaving by IF.
  - sysctls: net.ipv4.ip_forward=1, net.ipv6.conf.all.forwarding=1,
      net.ipv4.conf.all.send_redirects=0 and net.ipv4.conf.<in-iface>.send_redirects=0.
    Before changing one, its old value is saved in the state file (only the first time: a second
    `up` keeps the original values), and `down` writes them back.

up and down need root or the capability CAP_NET_ADMIN (the systemd unit gives it an unprivileged user).

Exit status: 0 ok, 2 bad usage (a malformed value, e.g. --exclude 10.0.0.0/33), 1 anything else (no
such interface, a ruleset nftables refuses; nothing is changed then), for `up` and `up --dry-run` alike.
EOF
}

die() { echo "$PROG: $*" >&2; exit 1; }
bad_usage() { echo "$PROG: $*" >&2; echo "Try '$PROG --help'." >&2; exit 2; }

COMMAND=up
IN_IFACES=""
PORT=8080
WORKERS=1
TCP_PORTS="80,443"
EXCLUDE=""
DROP_QUIC=1
MASQUERADE=""
DRY_RUN=0
TABLE=geoblock
STATE=""
NETNS=""
ORIG_ARGS=("$@")

need_value() { [ $# -ge 2 ] && [ -n "$2" ] || bad_usage "option $1 needs a value"; }

while [ $# -gt 0 ]; do
	case "$1" in
	up | down | status) COMMAND=$1 ;;
	--in-iface) need_value "$@"; IN_IFACES=$2; shift ;;
	--in-iface=*) IN_IFACES=${1#*=} ;;
	--port) need_value "$@"; PORT=$2; shift ;;
	--port=*) PORT=${1#*=} ;;
	--workers) need_value "$@"; WORKERS=$2; shift ;;
	--workers=*) WORKERS=${1#*=} ;;
	--tcp-ports) need_value "$@"; TCP_PORTS=$2; shift ;;
	--tcp-ports=*) TCP_PORTS=${1#*=} ;;
	--exclude) need_value "$@"; EXCLUDE=${EXCLUDE:+$EXCLUDE,}$2; shift ;;
	--exclude=*) EXCLUDE=${EXCLUDE:+$EXCLUDE,}${1#*=} ;;
	--no-drop-quic) DROP_QUIC=0 ;;
	--masquerade) need_value "$@"; MASQUERADE=$2; shift ;;
	--masquerade=*) MASQUERADE=${1#*=} ;;
	--drop-quic) DROP_QUIC=1 ;;
	--dry-run | -n) DRY_RUN=1 ;;
	--table) need_value "$@"; TABLE=$2; shift ;;
	--table=*) TABLE=${1#*=} ;;
	--state) need_value "$@"; STATE=$2; shift ;;
	--state=*) STATE=${1#*=} ;;
	--netns) need_value "$@"; NETNS=$2; shift ;;
	--netns=*) NETNS=${1#*=} ;;
	-h | --help) usage; exit 0 ;;
	*) bad_usage "unknown argument: $1" ;;
	esac
	shift
done

# ---------------------------------------------------------------------------------------- validation

is_port() { [[ $1 =~ ^[0-9]{1,5}$ ]] && [ "$((10#$1))" -ge 1 ] && [ "$((10#$1))" -le 65535 ]; }

# is_net4 CIDR: an IPv4 address with an optional prefix length, every octet 0-255, the prefix 0-32.
is_net4() {
	[[ $1 =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})(/([0-9]{1,2}))?$ ]] || return 1
	local n
	for n in 1 2 3 4; do [ "$((10#${BASH_REMATCH[$n]}))" -le 255 ] || return 1; done
	[ -z "${BASH_REMATCH[6]}" ] || [ "$((10#${BASH_REMATCH[6]}))" -le 32 ]
}
# is_net6 CIDR: an IPv6 address form with an optional prefix length 0-128 (nft checks the address itself).
is_net6() {
	[[ $1 =~ ^[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(/([0-9]{1,3}))?$ ]] || return 1
	[ -z "${BASH_REMATCH[2]}" ] || [ "$((10#${BASH_REMATCH[2]}))" -le 128 ]
}

[[ $TABLE =~ ^[A-Za-z_][A-Za-z0-9_]{0,63}$ ]] || bad_usage "bad --table name: $TABLE"
if [ -n "$NETNS" ]; then
	[[ $NETNS =~ ^[A-Za-z0-9_.-]{1,64}$ ]] || bad_usage "bad --netns name: $NETNS"
fi

if [ "$COMMAND" = up ]; then
	[ -n "$IN_IFACES" ] || bad_usage "up needs --in-iface (the client-facing interface)"
	IFS=, read -r -a IFACE_LIST <<<"$IN_IFACES"
	for i in "${IFACE_LIST[@]}"; do
		[[ $i =~ ^[A-Za-z0-9_.:@-]{1,15}$ ]] || bad_usage "bad interface name: '$i'"
	done
	MASQ_LIST=()
	if [ -n "$MASQUERADE" ]; then
		IFS=, read -r -a MASQ_LIST <<<"$MASQUERADE"
		for i in "${MASQ_LIST[@]}"; do
			[[ $i =~ ^[A-Za-z0-9_.:@-]{1,15}$ ]] || bad_usage "bad interface name in --masquerade: '$i'"
		done
	fi
	is_port "$PORT" || bad_usage "bad --port: $PORT"
	PORT=$((10#$PORT))
	[[ $WORKERS =~ ^[0-9]+$ ]] && [ "$((10#$WORKERS))" -ge 1 ] && [ "$((10#$WORKERS))" -le 64 ] ||
		bad_usage "--workers must be a number from 1 to 64, not $WORKERS"
	WORKERS=$((10#$WORKERS))
	[ $((PORT + WORKERS - 1)) -le 65535 ] || bad_usage "--port $PORT with --workers $WORKERS goes past port 65535"
	IFS=, read -r -a TCP_LIST <<<"$TCP_PORTS"
	[ ${#TCP_LIST[@]} -ge 1 ] || bad_usage "--tcp-ports is empty"
	for p in "${TCP_LIST[@]}"; do
		is_port "$p" || bad_usage "bad port in --tcp-ports: '$p'"
	done
	EX4=() EX6=()
	if [ -n "$EXCLUDE" ]; then
		IFS=, read -r -a EX_LIST <<<"$EXCLUDE"
		for net in "${EX_LIST[@]}"; do
			net=${net// /}
			[ -n "$net" ] || continue
			if is_net4 "$net"; then
				EX4+=("$net")
			elif is_net6 "$net"; then
				EX6+=("$net")
			else
				bad_usage "bad network in --exclude: '$net' (an IPv4 or IPv6 address or CIDR: octets 0-255, prefix up to /32 or /128)"
			fi
		done
	fi
fi

# ------------------------------------------------------------------------------- namespace re-entry

# With --netns, everything (nft, sysctls) runs in that namespace: re-run this script inside it.
if [ -n "$NETNS" ] && [ "${GEOBLOCK_GATEWAY_IN_NETNS:-}" != "$NETNS" ]; then
	[ "$(id -u)" = 0 ] || die "--netns needs root"
	ip netns list 2>/dev/null | awk '{print $1}' | grep -qxF -- "$NETNS" || die "no network namespace named $NETNS"
	GEOBLOCK_GATEWAY_IN_NETNS=$NETNS exec ip netns exec "$NETNS" bash "$SELF" "${ORIG_ARGS[@]}"
fi

STATE=${STATE:-/run/geoblock-gateway/${NETNS:-host}.state}

# --------------------------------------------------------------------------------------- the ruleset

# join_by SEP ITEM...: the items separated by SEP.
join_by() {
	local sep=$1 out="" x
	shift
	for x in "$@"; do out+="${out:+$sep}$x"; done
	printf '%s' "$out"
}
# quoted IF...: "IF1", "IF2"
quoted() {
	local out=() i
	for i in "$@"; do out+=("\"$i\""); done
	join_by ", " "${out[@]}"
}
proxy_ports() {
	local out=() n
	for ((n = 0; n < WORKERS; n++)); do out+=("$((PORT + n))"); done
	join_by ", " "${out[@]}"
}
redirect_target() {
	if [ "$WORKERS" -eq 1 ]; then
		echo ":$PORT"
	else
		local out=() n
		for ((n = 0; n < WORKERS; n++)); do out+=("$n : $((PORT + n))"); done
		echo ":numgen inc mod $WORKERS map { $(join_by ", " "${out[@]}") }"
	fi
}
set_elements() {
	[ $# -gt 0 ] || return 0
	echo " elements = { $(join_by ", " "$@") };"
}

ruleset() {
	local ifs ports tcp
	ifs=$(quoted "${IFACE_LIST[@]}")
	ports=$(proxy_ports)
	tcp=$(join_by ", " "${TCP_LIST[@]}")
	cat <<EOF
# geoblock gateway ruleset, written by scripts/gateway.sh: do not edit, rerun the script.
# The first two lines make the load idempotent and atomic: the whole file is one transaction that
# replaces this table (and only this table).
table inet $TABLE
delete table inet $TABLE
table inet $TABLE {
	comment "geoblock gateway (scripts/gateway.sh); in: $IN_IFACES; proxy ports: $ports"

	set exclude4 {
		type ipv4_addr; flags interval; auto-merge;$(set_elements "${EX4[@]}")
	}
	set exclude6 {
		type ipv6_addr; flags interval; auto-merge;$(set_elements "${EX6[@]}")
	}

	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		iifname != { $ifs } return
		fib daddr type local return comment "traffic to the gateway itself"
		ip daddr @exclude4 return
		ip6 daddr @exclude6 return
		tcp dport { $tcp } counter redirect to $(redirect_target) comment "to mitmdump --mode transparent"
	}

	chain forward {
		type filter hook forward priority filter; policy accept;
		iifname != { $ifs } return
		ip daddr @exclude4 return
		ip6 daddr @exclude6 return
EOF
	if [ "$DROP_QUIC" = 1 ]; then
		echo '		udp dport 443 counter drop comment "QUIC: browsers fall back to TCP, where geoblock sees the SNI"'
	fi
	cat <<EOF
	}

	chain input {
		type filter hook input priority filter; policy accept;
		iifname "lo" return
		tcp dport { $ports } ct status dnat return comment "redirected here by prerouting"
		tcp dport { $ports } counter reject with tcp reset comment "the proxy port dialled directly"
	}

	chain output {
		type filter hook output priority filter; policy accept;
		icmp type redirect counter drop comment "redirects would steer clients around the gateway"
		icmpv6 type nd-redirect counter drop
	}
EOF
	if [ ${#MASQ_LIST[@]} -gt 0 ]; then
		cat <<EOF

	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		iifname { $ifs } oifname { $(quoted "${MASQ_LIST[@]}") } counter masquerade comment "--masquerade"
	}
EOF
	fi
	echo "}"
}

# ---------------------------------------------------------------------------------------- sysctls

# The sysctls `up` sets, as /proc/sys paths (interface names with dots work as paths, not as sysctl keys).
wanted_sysctls() {
	echo "/proc/sys/net/ipv4/ip_forward 1"
	echo "/proc/sys/net/ipv6/conf/all/forwarding 1"
	echo "/proc/sys/net/ipv4/conf/all/send_redirects 0"
	local i
	for i in "${IFACE_LIST[@]}"; do
		echo "/proc/sys/net/ipv4/conf/$i/send_redirects 0"
	done
}

state_has() { [ -f "$STATE" ] && awk -v k="$1" '$1 == "sysctl" && $2 == k { found = 1 } END { exit !found }' "$STATE"; }

apply_sysctls() {
	local path value old
	mkdir -p "$(dirname "$STATE")"
	if [ ! -f "$STATE" ]; then
		printf '# geoblock gateway state: the values before the first `up`; `down` restores them.\ntable inet %s\n' \
			"$TABLE" >"$STATE"
	fi
	while read -r path value; do
		[ -e "$path" ] || die "no sysctl $path (is the interface there?)"
		old=$(cat "$path")
		if ! state_has "$path"; then
			echo "sysctl $path $old" >>"$STATE"
		fi
		if [ "$old" != "$value" ]; then
			echo "$value" >"$path" || die "cannot set $path=$value"
		fi
	done < <(wanted_sysctls)
}

restore_sysctls() {
	[ -f "$STATE" ] || { echo "$PROG: no saved state ($STATE): sysctls left as they are"; return 0; }
	local kind path value lines=()
	mapfile -t lines < <(awk '$1 == "sysctl" { print $2, $3 }' "$STATE")
	# Reverse order: the interface values first, ip_forward (which resets every interface) last.
	local n
	for ((n = ${#lines[@]} - 1; n >= 0; n--)); do
		read -r path value <<<"${lines[$n]}"
		if [ -e "$path" ]; then
			echo "$value" >"$path" || echo "$PROG: warning: cannot restore $path=$value" >&2
		else
			echo "$PROG: warning: $path is gone (interface removed?); not restored" >&2
		fi
	done
	rm -f -- "$STATE"
}

table_exists() { nft list table inet "$TABLE" >/dev/null 2>&1; }

# can_admin_net: this script may change the network: it runs as root, or holds CAP_NET_ADMIN (bit 12
# of its effective set), as under geoblock-gateway.service (an unprivileged user with that capability
# alone, which is enough for nft and for writing the net.* sysctls).
can_admin_net() {
	[ "$(id -u)" = 0 ] && return 0
	local eff
	eff=$(awk '$1 == "CapEff:" { print $2 }' "/proc/$$/status")
	[ -n "$eff" ] && (( (16#$eff >> 12) & 1 ))
}

# check_interfaces: every --in-iface exists (in this namespace); dies naming the first that does not.
check_interfaces() {
	local i
	for i in "${IFACE_LIST[@]}"; do
		[ -e "/sys/class/net/$i" ] || [ -e "/proc/sys/net/ipv4/conf/$i" ] || die "no interface $i"
	done
}

# check_ruleset FILE: nftables accepts FILE (`nft -c`: parsed and checked by the kernel, nothing
# applied). When it does not, dies naming the --exclude value nftables refuses on its own (each is
# tried alone), else with nft's message and the line it points at.
check_ruleset() {
	local out net type
	out=$(nft -c -f "$1" 2>&1) && return 0
	for net in "${EX4[@]}" "${EX6[@]}"; do
		type=ipv4_addr
		[[ $net == *:* ]] && type=ipv6_addr
		nft -c -f - >/dev/null 2>&1 <<EOF || die "bad network in --exclude: '$net' (nftables refuses it as an $type); nothing changed"
table inet geoblock_check { set s { type $type; flags interval; elements = { $net }; }; }
EOF
	done
	printf '%s\n' "$out" | sed "s|$1|ruleset|" >&2
	die "nftables refused the ruleset; nothing changed"
}

# ---------------------------------------------------------------------------------------- commands

case "$COMMAND" in
up)
	check_interfaces
	tmp=$(mktemp "${TMPDIR:-/tmp}/geoblock-gateway.XXXXXX.nft")
	trap 'rm -f -- "$tmp"' EXIT
	ruleset >"$tmp"
	if [ "$DRY_RUN" = 1 ]; then
		# The same checks as `up`, without applying anything. `nft -c` talks to the kernel and needs
		# root (CAP_NET_ADMIN): without it the ruleset is printed unchecked, and the note says so.
		if ! can_admin_net; then
			echo "$PROG: note: neither root nor CAP_NET_ADMIN: the ruleset below was not checked by nftables (nft -c)" >&2
		elif ! command -v nft >/dev/null; then
			echo "$PROG: note: nft is not installed: the ruleset below was not checked" >&2
		else
			check_ruleset "$tmp"
		fi
		cat -- "$tmp"
		echo "# sysctls:"
		wanted_sysctls | sed 's|^/proc/sys/||; s|/|.|g; s| |=|; s|^|#   |'
		exit 0
	fi
	can_admin_net || die "up needs root or CAP_NET_ADMIN"
	command -v nft >/dev/null || die "nft is not installed (apt-get install nftables)"
	check_ruleset "$tmp"
	nft -f "$tmp" || die "nftables refused the ruleset; nothing changed (see: $PROG up --dry-run ...)"
	apply_sysctls
	echo "$PROG: up: table inet $TABLE redirects TCP $(join_by , "${TCP_LIST[@]}") from $IN_IFACES to port(s) $(join_by , $(proxy_ports | tr -d ,))${NETNS:+ (netns $NETNS)}"
	;;
down)
	can_admin_net || die "down needs root or CAP_NET_ADMIN"
	if [ -f "$STATE" ]; then
		saved=$(awk '$1 == "table" { print $3 }' "$STATE")
		[ -z "$saved" ] || TABLE=$saved
	fi
	if table_exists; then
		nft delete table inet "$TABLE"
		echo "$PROG: down: table inet $TABLE deleted"
	else
		echo "$PROG: down: no table inet $TABLE"
	fi
	restore_sysctls
	;;
status)
	if table_exists; then
		nft list table inet "$TABLE"
	else
		echo "no table inet $TABLE"
	fi
	if [ -f "$STATE" ]; then
		echo "# saved state $STATE:"
		cat "$STATE"
	else
		echo "# no saved state ($STATE)"
	fi
	;;
esac
