#!/usr/bin/env bash
# Install `hilum serve` as a systemd service: the unit, its system user and its data folder.
#
#   install-service.sh [--root DIR] [--prefix /opt/hilum | --exec PATH] [--data /var/lib/hilum] [--enable]
#
#   --root DIR     install into DIR as if it were / (a temporary root for tests, an image being built);
#                  nothing is started and systemctl is not called.
#   --prefix DIR   where the Hilum bundle (.deb / PyInstaller folder) lives: ExecStart=DIR/hilum (default /opt/hilum)
#   --exec PATH    the hilum executable itself, e.g. /opt/hilum-venv/bin/hilum for a venv install
#   --data DIR     the data folder (default /var/lib/hilum; another path also becomes ReadWritePaths=)
#   --enable       on the live system (no --root): systemctl enable --now hilum
#
# It installs hilum.service into /etc/systemd/system, hilum.sysusers.conf and hilum.tmpfiles.conf into
# /usr/lib/sysusers.d and /usr/lib/tmpfiles.d (as hilum.conf), creates the user `hilum` (systemd-sysusers,
# else useradd) and the data folder (systemd-tmpfiles, else install -d).  Run it again after an upgrade:
# it is idempotent.  See installer/SERVER.md.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="" prefix="/opt/hilum" exe="" data="/var/lib/hilum" enable=0
die() { echo "install-service.sh: $*" >&2; exit 2; }
while (($#)); do
  case "$1" in
    --root) root="${2:?--root needs a folder}"; shift 2 ;;
    --prefix) prefix="${2:?--prefix needs a folder}"; shift 2 ;;
    --exec) exe="${2:?--exec needs a path}"; shift 2 ;;
    --data) data="${2:?--data needs a folder}"; shift 2 ;;
    --enable) enable=1; shift ;;
    -h|--help) sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[[ -n "$exe" ]] || exe="${prefix%/}/hilum"
[[ "$exe" == /* ]] || die "--exec/--prefix must be absolute paths, got $exe"
[[ "$data" == /* ]] || die "--data must be an absolute path, got $data"
[[ "$exe$data" != *[[:space:]]* ]] || die "paths with spaces are not supported"
if [[ -n "$root" ]]; then
  mkdir -p "$root"
  root="$(cd "$root" && pwd)"
elif [[ $(id -u) -ne 0 ]]; then
  die "run as root (or with --root DIR)"
fi
[[ -x "$root$exe" ]] || echo "install-service.sh: warning: $root$exe is not (yet) an executable" >&2

unit="$root/etc/systemd/system/hilum.service"
install -d -m 0755 "$root/etc/systemd/system" "$root/usr/lib/sysusers.d" "$root/usr/lib/tmpfiles.d"
# The unit, with this install's executable and data folder.
sed -e "s#^ExecStart=/opt/hilum/hilum serve --data /var/lib/hilum\$#ExecStart=$exe serve --data $data#" \
    -e "s#^ReadWritePaths=/var/lib/hilum\$#ReadWritePaths=$data#" \
    -e "s#HOME=/var/lib/hilum\$#HOME=$data#" \
    -e "s#^WorkingDirectory=/var/lib/hilum\$#WorkingDirectory=$data#" \
    "$here/hilum.service" > "$unit.tmp"
grep -q "^ExecStart=$exe serve --data $data\$" "$unit.tmp" || die "could not set ExecStart in the unit"
chmod 0644 "$unit.tmp"
mv -f "$unit.tmp" "$unit"
install -m 0644 "$here/hilum.sysusers.conf" "$root/usr/lib/sysusers.d/hilum.conf"
sed -e "s#/var/lib/hilum#$data#g" "$here/hilum.tmpfiles.conf" > "$root/usr/lib/tmpfiles.d/hilum.conf"
chmod 0644 "$root/usr/lib/tmpfiles.d/hilum.conf"

# The system user: systemd-sysusers reads the file just installed (it writes passwd/group/shadow/gshadow
# under --root); useradd where systemd-sysusers is missing.
root_arg=()
[[ -n "$root" ]] && root_arg=(--root "$root")
if command -v systemd-sysusers >/dev/null 2>&1; then
  if [[ -n "$root" ]]; then
    install -d -m 0755 "$root/etc"
    for f in passwd group; do [[ -e "$root/etc/$f" ]] || install -m 0644 /dev/null "$root/etc/$f"; done
    for f in shadow gshadow; do [[ -e "$root/etc/$f" ]] || install -m 0640 /dev/null "$root/etc/$f"; done
  fi
  systemd-sysusers "${root_arg[@]}" "$root/usr/lib/sysusers.d/hilum.conf"
elif ! getent passwd hilum >/dev/null 2>&1 || [[ -n "$root" ]]; then
  if ! grep -q '^hilum:' "$root/etc/passwd" 2>/dev/null; then
    useradd "${root_arg[@]}" --system --user-group --home-dir "$data" --no-create-home \
      --shell /usr/sbin/nologin --comment "Hilum DICOM node" hilum
  fi
fi
grep -q '^hilum:' "$root/etc/passwd" || die "the user hilum was not created"

# The data folder (and its logs/), owned by hilum, closed to others.
if command -v systemd-tmpfiles >/dev/null 2>&1; then
  systemd-tmpfiles --create "${root_arg[@]}" "$root/usr/lib/tmpfiles.d/hilum.conf"
else
  uid="$(awk -F: '$1=="hilum"{print $3}' "$root/etc/passwd")"
  gid="$(awk -F: '$1=="hilum"{print $4}' "$root/etc/passwd")"
  install -d -m 0750 -o "$uid" -g "$gid" "$root$data" "$root$data/logs"
fi

echo "installed $unit (ExecStart=$exe serve --data $data), user hilum, data folder $root$data"
if [[ -z "$root" ]] && [[ -d /run/systemd/system ]]; then
  systemctl daemon-reload
  if ((enable)); then
    systemctl enable --now hilum.service
    systemctl --no-pager status hilum.service || true
  else
    echo "next: put settings in $data/hilum.toml, then: systemctl enable --now hilum"
  fi
elif ((enable)); then
  echo "install-service.sh: --enable ignored (no running systemd, or --root given)" >&2
fi
